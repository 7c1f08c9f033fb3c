"""Perturbation geometries: the direction and metric of the adversarial step.

A geometry maps the clean gradient `g` (float32, loss scaling undone), the
weights `θ` and a radius `r` to the perturbation `ε = r · u`, where `u` is a
direction of size 1 in the geometry's own norm. A zero gradient gives `ε = 0`.

    >>> import numpy as np
    >>> from keras_tram import geometry
    >>> eps = geometry.Euclidean().perturbation([np.array([3.0, 4.0])], [np.ones(2)], 0.5)
    >>> [round(float(e), 6) for e in eps[0]]
    [0.3, 0.4]
"""

import keras
from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram.pieces._component import Configurable
from keras_tram.pieces._validation import check_non_negative


def global_norm(tensors):
    """The L2 norm of a list of tensors taken as one vector, in float32."""
    tensors = as_float32(tensors)
    fused = _backend.fused_global_norm(tensors)
    if fused is not None:
        return fused
    return ops.norm(ops.stack([_norm(t) for t in tensors]))


def _norm(tensor):
    """The L2 norm of one tensor, with as few ops as its rank allows."""
    if len(tensor.shape) not in (1, 2):
        tensor = ops.reshape(tensor, (-1,))
    return ops.norm(tensor)  # Frobenius for matrices


def safe_reciprocal(x):
    """`1 / x` where `x > 0`, and 0 where `x == 0`."""
    positive = ops.greater(x, 0.0)
    return ops.where(positive, 1.0 / ops.where(positive, x, 1.0), 0.0)


def as_float32(tensors):
    """Tensors in float32, cast only where they are not already."""
    return [as_dtype(t, "float32") for t in tensors]


def as_dtype(tensor, dtype):
    """`tensor` as a backend tensor of `dtype`, unchanged if it already is one
    (on torch, a Keras op per weight costs as much as the arithmetic)."""
    dtype = keras.backend.standardize_dtype(dtype)
    if ops.is_tensor(tensor) and keras.backend.standardize_dtype(tensor.dtype) == dtype:
        return tensor
    return ops.cast(tensor, dtype)


class Geometry(Configurable):
    """Base class: subclasses implement `perturbation(grads, weights, radius)`.

    A subclass whose `ε` is 0 wherever the gradient is, and whose norms
    take nothing from there, sets `zero_with_gradient = True`: an embedding
    table is then perturbed on the rows the batch looked up only.
    """

    zero_with_gradient = False

    def perturbation(self, grads, weights, radius, grad_norm=None):
        """Returns `ε` as float32 tensors matching `grads`.

        `grad_norm`, when given, is `global_norm(grads)`, already computed.
        """
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_tram")
class Euclidean(Geometry):
    """SAM's ball (Foret et al., 2021): `u = g / ‖g‖`."""

    zero_with_gradient = True

    def perturbation(self, grads, weights, radius, grad_norm=None):
        grads = as_float32(grads)
        if grad_norm is None:
            grad_norm = global_norm(grads)
        return _backend.scale(grads, radius * safe_reciprocal(grad_norm))


@keras.saving.register_keras_serializable(package="keras_tram")
class Adaptive(Geometry):
    """ASAM's scale-invariant ellipsoid (Kwon et al., 2021).

    `u = T² g / ‖T g‖` with `T = |θ| + η`. With `eta=0` this is the form the
    TRAM paper uses, `θ² ⊙ g / ‖θ ⊙ g‖`.

    Args:
        eta: non-negative offset added to `|θ|`, so zero weights still move.
    """

    zero_with_gradient = True

    def __init__(self, eta=0.0):
        self.eta = check_non_negative("eta", eta)

    def perturbation(self, grads, weights, radius, grad_norm=None):
        grads = as_float32(grads)
        weights = as_float32(weights)
        # With eta = 0, T = |θ| enters as T² and ‖T g‖ = ‖θ g‖: no abs needed.
        scales = weights if self.eta == 0 else [ops.abs(w) + self.eta for w in weights]
        scaled = _backend.multiply(scales, grads)
        scale = radius * safe_reciprocal(global_norm(scaled))
        return _backend.scale(_backend.multiply(scales, scaled), scale)

    def get_config(self):
        return {"eta": self.eta}



@keras.saving.register_keras_serializable(package="keras_tram")
class Fisher(Geometry):
    """FSAM's Fisher ellipsoid (Kim et al., 2022).

    `u = D g / sqrt(gᵀ D g)` with `D = (1 + η f)⁻¹` and `f = g²`, the
    diagonal Fisher estimated from the batch gradient.

    Args:
        eta: a finite number >= 0 weighting the Fisher estimate.
    """

    zero_with_gradient = True

    def __init__(self, eta=0.1):
        self.eta = check_non_negative("eta", eta)

    def perturbation(self, grads, weights, radius, grad_norm=None):
        grads = as_float32(grads)
        inverse = [1.0 / (1.0 + self.eta * ops.square(g)) for g in grads]
        scaled = [d * g for d, g in zip(inverse, grads)]
        squared = ops.sum(ops.stack([ops.sum(dg * g) for dg, g in zip(scaled, grads)]))
        scale = radius * safe_reciprocal(ops.sqrt(squared))
        return [dg * scale for dg in scaled]

    def get_config(self):
        return {"eta": self.eta}


@keras.saving.register_keras_serializable(package="keras_tram")
class Released(Geometry):
    """The perturbation of TRAM's released code (tomsherborne/tram_optimizer).

    `ε = r · T² / (‖T ⊙ g‖ + 1e-12)` with `T = |θ|` (`adaptive=True`), or
    `ε = r / (‖g‖ + 1e-12)` added to every weight (`adaptive=False`). The
    gradient enters only through the norm, so each weight moves by `s · θ²`
    whatever the sign of its gradient: this is not the paper's equation
    (`Adaptive` is), and exists to reproduce published numbers. As in that
    code, a zero gradient with a radius above 0 divides by 1e-12.

    Args:
        adaptive: whether `T = |θ|` (True, TRAM's form) or `T = 1`.
    """

    def __init__(self, adaptive=True):
        if not isinstance(adaptive, bool):
            raise TypeError(f"`adaptive` must be True or False; received {adaptive!r}.")
        self.adaptive = adaptive

    def perturbation(self, grads, weights, radius, grad_norm=None):
        grads = as_float32(grads)
        if not self.adaptive:
            norm = global_norm(grads) if grad_norm is None else grad_norm
            scale = radius / (norm + 1e-12)
            return [ops.ones_like(g) * scale for g in grads]
        weights = as_float32(weights)
        # ‖|θ| ⊙ g‖ = ‖θ ⊙ g‖.
        scale = radius / (global_norm([w * g for w, g in zip(weights, grads)]) + 1e-12)
        return [ops.square(w) * scale for w in weights]

    def get_config(self):
        return {"adaptive": self.adaptive}
