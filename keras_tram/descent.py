"""How the descent gradient is formed from the clean and the perturbed gradient.

Without a descent piece a sharpness-aware step descends along the gradient
at the perturbed weights, `g_p = ∇L(θ + ε)`. A descent piece changes that
from `g` and `g_p`:

    >>> import numpy as np
    >>> from keras_tram import descent
    >>> g, g_p = [np.array([1.0, 1.0])], [np.array([2.0, 0.0])]
    >>> d = descent.SurrogateGap(alpha=0.5).combine(g, g_p, g, g_p)
    >>> [round(float(v), 6) for v in d[0]]  # g_⊥ = [0, 1]: g_p − 0.5 g_⊥
    [2.0, -0.5]
"""

import keras
from keras import ops

from keras_tram._config import Configurable
from keras_tram._validation import check_non_negative


class Descent(Configurable):
    """Base class: subclasses implement `combine(clean, perturbed, g, g_p)`."""

    def __call__(self, step, clean, perturbed, g_p):
        """The descent gradient, in the units of `clean` and `perturbed` (the
        loss-scaled gradients of this replica's loss); `step.grads` is `g`
        and `g_p` the perturbed gradient in the same units (float32, the
        whole batch's), from which any projection is taken."""
        return self.combine(clean, perturbed, step.grads, g_p)

    def combine(self, clean, perturbed, g, g_p):
        raise NotImplementedError


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
        inner = ops.sum(ops.stack([ops.sum(a * b) for a, b in zip(g, g_p)]))
        squared = ops.sum(ops.stack([ops.sum(ops.square(b)) for b in g_p]))
        positive = ops.greater(squared, 0.0)
        ratio = ops.where(positive, inner / ops.where(positive, squared, 1.0), 0.0)
        combined = []
        for c, p in zip(clean, perturbed):
            p = ops.convert_to_tensor(p)
            orthogonal = ops.subtract(ops.cast(c, p.dtype), ops.cast(ratio, p.dtype) * p)
            combined.append(p - ops.cast(self.alpha, p.dtype) * orthogonal)
        return combined

    def get_config(self):
        return {"alpha": self.alpha}
