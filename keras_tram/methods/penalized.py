"""The penalty methods: a plain step on the loss plus a trust-region divergence
(TRPO, R3F, MESA), each a reference and a weight."""

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces.penalty import Penalty
from keras_tram.pieces.references import MovingAverageWeights
from keras_tram.pieces.references import NoisedInputs
from keras_tram.pieces.references import PreviousWeights


class _PenaltyMethod(SharpnessAware):
    """A plain step on `L + weight · d(reference ‖ current)`."""

    def __init__(self, model, reference, weight, divergence, from_logits, output_key,
                 **kwargs):
        penalty = Penalty(reference, weight, divergence, from_logits, output_key)
        super().__init__(model, penalty=penalty, **kwargs)

    def _penalty_config(self):
        config = self.penalty.get_config()
        del config["reference"]  # each method names its reference's arguments
        return config


@keras.saving.register_keras_serializable(package="keras_tram")
class TRPO(_PenaltyMethod):
    """Trust-region penalty on the previous step: `L + λ · KL(θ_{t-1} ‖ θ)`.

    Args:
        model: the `keras.Model` to train.
        weight: λ, >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.TRPO(model, weight=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    # The logged penalty is λ times the logged divergence.
    assert np.allclose(history.history["penalty"], 0.1 * np.array(history.history["divergence"]))
    ```
    """

    def __init__(self, model, weight=0.1, divergence="kl", from_logits=True,
                 output_key="logits", **kwargs):
        super().__init__(model, PreviousWeights(), weight, divergence, from_logits,
                         output_key, **kwargs)

    def get_config(self):
        return {**self._base_config(), **self._penalty_config()}


@keras.saving.register_keras_serializable(package="keras_tram")
class R3F(_PenaltyMethod):
    """R3F (Aghajanyan et al., 2021): `L + λ · KL(x + z ‖ x)`, `z ~ N(0, σ²)`.

    The noise goes on float inputs or on the token embeddings, as in
    `TRAM(variant="input_noise")`. The original R3F uses
    `divergence="symmetric_kl"`.

    Args:
        model: the `keras.Model` to train.
        noise_stddev: σ, >= 0.
        weight: λ, >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.
        noise_layer: where the noise goes for token-id models.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.R3F(model, noise_stddev=0.1, weight=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    # The logged penalty is λ times the logged divergence.
    assert np.allclose(history.history["penalty"], 0.1 * np.array(history.history["divergence"]))
    ```
    """

    def __init__(self, model, noise_stddev=0.1, weight=0.1, divergence="kl",
                 noise_layer=None, from_logits=True, output_key="logits", **kwargs):
        reference = NoisedInputs(noise_stddev, noise_layer)
        super().__init__(model, reference, weight, divergence, from_logits,
                         output_key, **kwargs)

    def get_config(self):
        reference = self.penalty.reference.get_config()
        return {
            **self._base_config(),
            "noise_stddev": reference["stddev"],
            "noise_layer": reference["noise_layer"],
            **self._penalty_config(),
        }


@keras.saving.register_keras_serializable(package="keras_tram")
class MESA(_PenaltyMethod):
    """MESA (Du et al., 2022): `L + λ · KL(EMA ‖ θ)` with an EMA of the weights.

    Args:
        model: the `keras.Model` to train.
        decay: the EMA decay, in [0, 1].
        weight: λ, >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.MESA(model, decay=0.999, weight=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    # The logged penalty is λ times the logged divergence.
    assert np.allclose(history.history["penalty"], 0.1 * np.array(history.history["divergence"]))
    ```
    """

    def __init__(self, model, decay=0.999, weight=0.1, divergence="kl",
                 from_logits=True, output_key="logits", **kwargs):
        super().__init__(model, MovingAverageWeights(decay), weight, divergence,
                         from_logits, output_key, **kwargs)

    def get_config(self):
        return {
            **self._base_config(),
            "decay": self.penalty.reference.decay,
            **self._penalty_config(),
        }
