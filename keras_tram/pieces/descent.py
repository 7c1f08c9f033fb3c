"""How the descent gradient is formed from the clean and the perturbed gradient.

By default (`AlongPerturbed`, what a method without a `descent` takes) a
sharpness-aware step descends along the gradient at the perturbed weights,
`g_p = ∇L(θ + ε)`. Another descent forms it from `g` and `g_p`:

    >>> import numpy as np
    >>> from keras_tram import descent
    >>> g, g_p = [np.array([1.0, 1.0])], [np.array([2.0, 0.0])]
    >>> d = descent.SurrogateGap(alpha=0.5).combine(g, g_p, g, g_p)
    >>> [round(float(v), 6) for v in d[0]]  # g_⊥ = [0, 1]: g_p − 0.5 g_⊥
    [2.0, -0.5]
"""

import keras
from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram.pieces import geometry
from keras_tram.pieces._component import Configurable
from keras_tram.pieces._validation import check_non_negative


class Descent(Configurable):
    """Base class: subclasses implement `combine(clean, perturbed, g, g_p)`."""

    def __call__(self, step, clean, perturbed, perturbed_mean):
        """The descent gradient, in the units of `clean` and `perturbed` (the
        loss-scaled gradients of this replica's loss); `step.grads` is `g`
        and `perturbed_mean()` gives `g_p`, the perturbed gradient in the
        units of `g` (float32, the whole batch's), from which any projection
        is taken (a function, so that a descent without one costs nothing)."""
        return self.combine(clean, perturbed, step.grads, perturbed_mean())

    def combine(self, clean, perturbed, g, g_p):
        raise NotImplementedError


class AlongPerturbed(Descent):
    """SAM's descent: along the perturbed gradient, as it is."""

    def __call__(self, step, clean, perturbed, perturbed_mean):
        return perturbed

    def combine(self, clean, perturbed, g, g_p):
        return perturbed


@keras.saving.register_keras_serializable(package="keras_tram")
class SurrogateGap(Descent):
    """GSAM's descent (Zhuang et al., "Surrogate Gap Guided Sharpness-Aware
    Minimization", ICLR 2022): `g_p − α · g_⊥`, where
    `g_⊥ = g − (⟨g, g_p⟩ / ‖g_p‖²) · g_p` is the component of the clean
    gradient orthogonal to `g_p` (all of `g` where `g_p = 0`). Descending
    along `−g_⊥` lowers the surrogate gap `L(θ + ε) − L(θ)` without changing
    the perturbed loss to first order.

    Args:
        alpha: α, a finite number >= 0; 0 is SAM's descent.
    """

    def __init__(self, alpha=0.4):
        self.alpha = check_non_negative("alpha", alpha)

    def combine(self, clean, perturbed, g, g_p):
        g, g_p = geometry.as_float32(g), geometry.as_float32(g_p)
        inner = ops.sum(ops.stack([ops.sum(t) for t in _backend.multiply(g, g_p)]))
        squared = ops.square(geometry.global_norm(g_p))
        positive = ops.greater(squared, 0.0)
        ratio = ops.where(positive, inner / ops.where(positive, squared, 1.0), 0.0)
        # g_p − α (c − r g_p) = (1 + α r) g_p − α c: two fused calls on torch.
        perturbed = [ops.convert_to_tensor(p) for p in perturbed]
        clean = [ops.convert_to_tensor(c) for c in clean]
        if not all(p.dtype == c.dtype == perturbed[0].dtype for p, c in zip(perturbed, clean)):
            return [
                ops.subtract(p, ops.cast(self.alpha, p.dtype) * ops.subtract(
                    ops.cast(c, p.dtype), ops.cast(ratio, p.dtype) * p))
                for c, p in zip(clean, perturbed)
            ]
        dtype = perturbed[0].dtype
        grown = _backend.scale(perturbed, ops.cast(1.0 + self.alpha * ratio, dtype))
        return _backend.add_scaled(grown, clean, ops.cast(-self.alpha, dtype))

    def get_config(self):
        return {"alpha": self.alpha}
