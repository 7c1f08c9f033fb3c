"""Perturbation geometries: the direction and metric of the adversarial step.

A geometry maps the clean gradient `g` (float32, loss scaling undone) and the
weights `θ` to a direction `u` whose size is 1 in the geometry's own norm, so
that the perturbation is `ε = r · u` for a radius `r`. A zero gradient gives
`u = 0`.

    >>> import numpy as np
    >>> from keras_tram import geometry
    >>> u = geometry.Euclidean().direction([np.array([3.0, 4.0])], [np.ones(2)])
    >>> np.round(np.asarray(u[0]), 3).tolist()
    [0.6, 0.8]
"""

import keras
from keras import ops

from keras_tram._validation import check_non_negative


def global_norm(tensors):
    """The L2 norm of a list of tensors taken as one vector, in float32."""
    squares = [ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors]
    return ops.sqrt(ops.sum(ops.stack(squares)))


def safe_reciprocal(x):
    """`1 / x` where `x > 0`, and 0 where `x == 0`."""
    positive = ops.greater(x, 0.0)
    return ops.where(positive, 1.0 / ops.where(positive, x, 1.0), 0.0)


def _float32(tensors):
    return [ops.cast(t, "float32") for t in tensors]


class Geometry:
    """Base class: subclasses implement `direction(grads, weights)`."""

    def direction(self, grads, weights):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_tram")
class Euclidean(Geometry):
    """SAM's ball (Foret et al., 2021): `u = g / ‖g‖`."""

    def direction(self, grads, weights):
        grads = _float32(grads)
        inverse_norm = safe_reciprocal(global_norm(grads))
        return [g * inverse_norm for g in grads]


@keras.saving.register_keras_serializable(package="keras_tram")
class Adaptive(Geometry):
    """ASAM's scale-invariant ellipsoid (Kwon et al., 2021).

    `u = T² g / ‖T g‖` with `T = |θ| + η`. With `eta=0` this is the form the
    TRAM paper uses, `θ² ⊙ g / ‖θ ⊙ g‖`.

    Args:
        eta: non-negative offset added to `|θ|`, so zero weights still move.
    """

    def __init__(self, eta=0.0):
        self.eta = check_non_negative("eta", eta)

    def direction(self, grads, weights):
        grads = _float32(grads)
        scales = [ops.abs(w) + self.eta for w in _float32(weights)]
        scaled = [t * g for t, g in zip(scales, grads)]
        inverse_norm = safe_reciprocal(global_norm(scaled))
        return [t * tg * inverse_norm for t, tg in zip(scales, scaled)]

    def get_config(self):
        return {"eta": self.eta}

