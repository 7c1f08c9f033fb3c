"""How often the full sharpness-aware step runs, and what the steps in
between descend along: LookSAM's reuse of the sharpness direction (Liu et
al., "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR
2022), for every perturbing method.

Every `every`-th optimizer update (`t % every == 0`) is a full step: the
method as it is, giving the clean gradient `g` and the gradient at the
perturbed point `g_s`, and keeping `g_v = g_s − (⟨g, g_s⟩ / ‖g‖²) g`, the part
of `g_s` orthogonal to `g` (the direction the perturbation adds). The updates
in between take one forward-backward pass for `g` and descend along
`g + α (‖g‖ / ‖g_v‖) g_v` (along `g` alone while `g_v` is 0). A `g_v` below
`TOLERANCE · ‖g_s‖` is float32 rounding, not a direction (two passes at the
same weights, as TRAM-θ_{t-1}'s first step takes, differ by about 1e-8 of
`‖g_s‖`), and is kept as 0 rather than scaled up to `α ‖g‖`.

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_tram.pieces.reuse import Reuse
    >>> reuse = Reuse(every=5, strength=0.5)
    >>> g, g_s = [np.array([1.0, 0.0], "float32")], [np.array([2.0, 1.0], "float32")]
    >>> direction, norm = reuse.direction(g, g_s)  # g_s minus its part along g
    >>> [ops.convert_to_numpy(v).tolist() for v in direction], float(norm)
    ([[0.0, 1.0]], 1.0)
"""

import keras
from keras import ops

from keras_tram.pieces import geometry as geometry_lib
from keras_tram.pieces._component import Configurable
from keras_tram.pieces._validation import check_non_negative
from keras_tram.pieces._validation import check_positive_int

TOLERANCE = 1e-5


@keras.saving.register_keras_serializable(package="keras_tram")
class Reuse(Configurable):
    """The full step every `every` optimizer updates, and the reuse of its
    sharpness direction `g_v` in between.

    With `every=1` (the default) every update is a full step and nothing is
    kept: the method exactly as without this piece. With `every > 1`, `g_v`
    is kept in float32 variables of the wrapper, one per trainable weight
    (saved in checkpoints and `.keras` files). Under gradient accumulation
    the micro-steps of one update are all full or all reuse steps, and the
    `g_v` of a full update is the mean of its micro-steps' `g_v`.

    Args:
        every: an integer >= 1: the full step runs on updates `0, every,
            2·every, ...` (`perturbation_every` of the wrapper).
        strength: α, a finite number >= 0 (`reuse_strength`; LookSAM's 0.7
            by default): how much of `g_v`, relative to `‖g‖`, the steps in
            between add.
    """

    def __init__(self, every=1, strength=0.7):
        self.every = check_positive_int("perturbation_every", every)
        self.strength = check_non_negative("reuse_strength", strength)
        self.variables = []
        self.norm = None

    @property
    def skips(self):
        """Whether some updates are not full steps."""
        return self.every > 1

    def build(self, wrapper):
        """Creates `g_v` (one float32 variable per trainable weight) and its
        norm (a float32 scalar), if needed."""
        if self.skips and not self.variables:
            self.variables = [
                wrapper.add_weight(
                    shape=variable.shape, dtype="float32", initializer="zeros",
                    trainable=False, name=f"reuse_direction_{i}",
                )
                for i, variable in enumerate(wrapper.trainable_variables)
            ]
            self.norm = wrapper.add_weight(
                shape=(), dtype="float32", initializer="zeros", trainable=False,
                name="reuse_direction_norm",
            )

    def is_full(self, update_index):
        """Whether the update of index `update_index` is a full step: True,
        or, when updates are skipped, a Python bool for a Python int index
        and a boolean tensor for a tensor."""
        if not self.skips:
            return True
        if isinstance(update_index, int):
            return update_index % self.every == 0
        return ops.equal(ops.mod(ops.cast(update_index, "int32"), self.every), 0)

    def direction(self, grads, perturbed_grads, grad_norm=None):
        """`(g_v, ‖g_v‖)`: `g_v = g_s − (⟨g, g_s⟩ / ‖g‖²) g` for float32 `g`
        and `g_s`, or 0 where it is below `TOLERANCE · ‖g_s‖`. `grad_norm`,
        when given, is `‖g‖`, already computed."""
        dot = sum(ops.sum(ops.multiply(g, s)) for g, s in zip(grads, perturbed_grads))
        if grad_norm is None:
            grad_norm = geometry_lib.global_norm(grads)
        coefficient = dot * geometry_lib.safe_reciprocal(ops.square(grad_norm))
        direction = [
            ops.subtract(s, ops.multiply(coefficient, g))
            for g, s in zip(grads, perturbed_grads)
        ]
        norm = geometry_lib.global_norm(direction)
        resolved = ops.greater(norm, TOLERANCE * geometry_lib.global_norm(perturbed_grads))
        return [ops.where(resolved, d, 0.0) for d in direction], ops.where(resolved, norm, 0.0)

    def get_config(self):
        return {"every": self.every, "strength": self.strength}
