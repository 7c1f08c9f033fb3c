"""A trust-region penalty added to the loss: `L + λ · d` (TRPO, R3F, MESA).

    >>> import keras_tram
    >>> keras_tram.penalty.Penalty(keras_tram.trust_region.PreviousWeights(), weight=0.1)
    Penalty(reference=PreviousWeights(), weight=0.1, divergence='kl', from_logits=True, output_key='logits')
"""

import keras

from keras_tram import trust_region
from keras_tram._validation import check_choice
from keras_tram._validation import check_instance
from keras_tram._validation import check_non_negative


@keras.saving.register_keras_serializable(package="keras_tram")
class Penalty:
    """Adds `weight · d(reference, current)` to the training loss.

    The gradient flows through the current predictions and, for a reference
    made from the current weights (noised inputs, as in R3F), through the
    reference predictions too; stored reference weights are constants. The
    logged `loss` stays the task loss; `divergence` and `penalty` are logged
    beside it.

    Args:
        reference: a `keras_tram.trust_region.Reference`.
        weight: λ, a finite number >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.
        from_logits: whether the model outputs logits (else probabilities).
        output_key: the entry of a dict output that holds the logits.
    """

    def __init__(self, reference, weight=0.1, divergence="kl", from_logits=True,
                 output_key="logits"):
        self.reference = check_instance("reference", reference, trust_region.Reference)
        self.weight = check_non_negative("weight", weight)
        self.divergence = check_choice("divergence", divergence, trust_region.DIVERGENCES)
        self.from_logits = bool(from_logits)
        self.output_key = output_key

    def build(self, wrapper):
        self.reference.build(wrapper)

    def fill(self, trainable_variables):
        self.reference.fill(trainable_variables)

    def update(self, step):
        return self.reference.update(step)

    @property
    def uses_noise(self):
        return self.reference.uses_noise

    def __call__(self, step, weights, y_pred):
        """Returns `(d, weight · d)` for predictions `y_pred` at `weights`."""
        d = trust_region.measure(
            self.reference, step, weights, y_pred, self.divergence,
            self.from_logits, self.output_key,
        )
        return d, self.weight * d

    def get_config(self):
        return {
            "reference": keras.saving.serialize_keras_object(self.reference),
            "weight": self.weight,
            "divergence": self.divergence,
            "from_logits": self.from_logits,
            "output_key": self.output_key,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["reference"] = keras.saving.deserialize_keras_object(config["reference"])
        return cls(**config)

    def __repr__(self):
        args = ", ".join(
            f"{k}={self.reference if k == 'reference' else v!r}"
            for k, v in self.get_config().items()
        )
        return f"Penalty({args})"
