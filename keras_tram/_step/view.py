"""`Step`: what the pieces of a method (geometry, radius, penalty, references,
descent) may read about the current training step."""

import math

from keras import ops

from keras_tram._step import batch as _batch


class Step:
    """What the pieces of a method may read about the current training step.

    A view, made by the step for each part of a batch it perturbs: it holds
    values and the functions pieces need (the forward pass, the sum over the
    replicas that share a perturbation), never the step itself.

    Attributes:
        x, y, sample_weight: the batch (or the part of it being perturbed).
        weights: current values of the trainable weights (θ).
        non_trainable: values of the non-trainable variables before the step.
        at: where the step stands in training (`keras_tram.schedule.At`: the
            update's index, the learning rate, the micro-step of gradient
            accumulation, whether the optimizer applies this step).
        rows: `(start, total)` when the batch is rows `start:` of a batch
            of `total` split into chunks, else None.
        y_pred, loss: the clean predictions and loss at `weights` (None
            until the clean pass has run).
        grads: the clean gradient `g` in float32, loss scaling undone.
        grad_norm: its global L2 norm.
        perturbation_sum: adds up values over the replicas that share a
            perturbation (all of them with `perturbation_scope="global"`,
            none with `"per_replica"`).
    """

    def __init__(self, batch, weights, non_trainable, at, forward, positions,
                 perturbation_sum, rows=None, clean=(None, None, None, None)):
        self.x, self.y, self.sample_weight = batch
        self.weights = weights
        self.non_trainable = non_trainable
        self.at = at
        self.rows = rows
        self.perturbation_sum = perturbation_sum
        self.y_pred, self.loss, self.grads, self.grad_norm = clean
        self._forward = forward
        self._positions = positions

    def after_clean_pass(self, y_pred, loss, grads, grad_norm):
        """This step as the pieces see it once the clean pass has run."""
        return self._with((self.x, self.y, self.sample_weight), (y_pred, loss, grads, grad_norm))

    def forward(self, weights, noise=None):
        """Predictions at `weights` in training mode, with the non-trainable
        state the clean pass started from (so the same dropout masks and
        BatchNorm mode), on noised inputs if `noise` is a `NoisedInputs`."""
        return self._forward(weights, self.non_trainable, self.x, noise, self.rows)[0]

    def head(self, fraction):
        """This step restricted to the first `ceil(fraction · batch)` examples
        (its batch, clean predictions and sample weights)."""
        size = _batch.size(self.x)
        if isinstance(size, int):
            count = max(1, math.ceil(fraction * size))
        else:
            scaled = ops.ceil(fraction * ops.cast(size, "float32"))
            count = ops.maximum(1, ops.cast(scaled, "int32"))
        batch = _batch.rows((self.x, self.y, self.sample_weight), 0, count)
        return self._with(batch, (_batch.rows(self.y_pred, 0, count), None, None, None))

    def value_of(self, variable):
        """The value a non-trainable variable of the wrapper had before the step."""
        return self.non_trainable[self._positions[id(variable)]]

    def _with(self, batch, clean):
        return Step(batch, self.weights, self.non_trainable, self.at, self._forward,
                    self._positions, self.perturbation_sum, self.rows, clean)
