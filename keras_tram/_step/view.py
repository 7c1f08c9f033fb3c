"""`Step`: what the pieces of a method (geometry, radius, penalty,
references) may read about the current training step."""

import math

from keras import ops

from keras_tram._step import batch as _batch
from keras_tram.pieces import schedule


class Step:
    """What the pieces of a method may read about the current training step.

    Attributes:
        x, y, sample_weight: the batch (or the part of it being perturbed).
        weights: current values of the trainable weights (θ).
        non_trainable: values of the non-trainable variables before the step.
        rows: `(start, total)` when the batch is rows `start:` of a batch
            of `total` split into chunks, else None.
        y_pred: the clean predictions at `weights` (set after the clean pass).
        loss: the clean loss (set after the clean pass).
        grads: the clean gradient `g` in float32, loss scaling undone.
        grad_norm: its global L2 norm.
        statistics: values to log this step, by name.
        applies_update: whether the optimizer changes the weights this step
            (False on the accumulating steps of gradient accumulation).
        full: whether this is a full step (True), not one that reuses the
            sharpness direction (`keras_tram.reuse.Reuse`); a boolean tensor
            when the method skips updates.
        direction, direction_norm: this part's share of the sharpness
            direction `g_v` after the step, and its norm (None unless the
            method reuses the direction).
        descent_norm: a scalar that is finite exactly when this part's
            descent gradient is, if the part knows one (else None: the step
            takes the gradient's norm).
        at: the update the step belongs to, as scheduled values read it (a
            `keras_tram.schedule.At`: its index and learning rate).
        new_non_trainable, new_metrics: the variables' values after the step.
        perturbation_sum: adds up values over the replicas that share a
            perturbation (all of them with `perturbation_scope="global"`,
            none with `"per_replica"`).
    """

    def __init__(self, algorithm, x, y, sample_weight, weights, non_trainable, rows=None):
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.weights = weights
        self.non_trainable = non_trainable
        self.rows = rows
        self.y_pred = None
        self.loss = None
        self.grads = None
        self.grad_norm = None
        self.statistics = {}
        self.applies_update = True
        self.full = True
        self.at = schedule.At()
        self.direction = None
        self.direction_norm = None
        self.descent_norm = None
        self.new_non_trainable = None
        self.new_metrics = None
        self.perturbation_sum = algorithm.perturbation_sum
        self._algorithm = algorithm

    def forward(self, weights, noise=None):
        """Predictions at `weights` in training mode, with the non-trainable
        state the clean pass started from (so the same dropout masks and
        BatchNorm mode), on noised inputs if `noise` is a `NoisedInputs`."""
        return self._algorithm.forward(weights, self.non_trainable, self.x, noise, self.rows)[0]

    def head(self, fraction):
        """This step restricted to the first `ceil(fraction · batch)` examples
        (its batch, clean predictions and sample weights)."""
        size = _batch.size(self.x)
        if isinstance(size, int):
            count = max(1, math.ceil(fraction * size))
        else:
            count = ops.maximum(1, ops.cast(ops.ceil(fraction * ops.cast(size, "float32")), "int32"))
        batch = _batch.rows((self.x, self.y, self.sample_weight), 0, count)
        part = Step(self._algorithm, *batch, self.weights, self.non_trainable, self.rows)
        part.y_pred = _batch.rows(self.y_pred, 0, count)
        part.statistics = self.statistics
        part.at = self.at
        return part

    def value_of(self, variable):
        """The value a non-trainable variable of the wrapper had before the step."""
        return self.non_trainable[self._algorithm.index_of(variable)]
