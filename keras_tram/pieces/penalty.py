"""A trust-region penalty added to the loss: `L + λ · d` (TRPO, R3F, MESA).

    >>> import keras_tram
    >>> keras_tram.penalty.Penalty(keras_tram.references.PreviousWeights(), weight=0.1)
    Penalty(reference=PreviousWeights(), divergence='kl', from_logits=True, output_key='logits', weight=0.1)
"""

import keras

from keras_tram.pieces import divergences
from keras_tram.pieces._validation import check_non_negative


@keras.saving.register_keras_serializable(package="keras_tram")
class Penalty(divergences.Distance):
    """Adds `weight · d(reference, current)` to the training loss.

    The gradient flows through the current predictions and, for a reference
    made from the current weights (noised inputs, as in R3F), through the
    reference predictions too; stored reference weights are constants. The
    logged `loss` stays the task loss; `divergence` and `penalty` are logged
    beside it.

    Args:
        reference: a `keras_tram.references.Reference`.
        weight: λ, a finite number >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.
        from_logits: whether the model outputs logits (else probabilities).
        output_key: the entry of a dict output that holds the logits.
        reduction: a `keras_tram.reduction.Reduction` (default: the paper's
            `PerPosition()`).
    """

    def __init__(self, reference, weight=0.1, divergence="kl", from_logits=True,
                 output_key="logits", reduction=None):
        super().__init__(reference, divergence, from_logits, output_key, reduction)
        self.weight = check_non_negative("weight", weight)

    def __call__(self, step, weights, y_pred, at_step_weights=True):
        """Returns `(d, weight · share)` for predictions `y_pred` at `weights`
        (the step's own, or perturbed ones): `d` over the whole batch, and the
        penalty on this replica's share of it (the whole `d` on one device)."""
        share, d = self.measure(step, weights, y_pred, at_step_weights=at_step_weights)
        return d, self.weight * share

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}
