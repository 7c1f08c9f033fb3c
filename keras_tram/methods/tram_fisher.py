"""TRAM-Fisher: FSAM's perturbation, its Fisher estimate taken from the
gradient on noised inputs."""

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces import schedule
from keras_tram.pieces.geometry import Fisher
from keras_tram.pieces.radius import Constant
from keras_tram.pieces.references import NoisedInputs


@keras.saving.register_keras_serializable(package="keras_tram")
class TRAMFisher(SharpnessAware):
    """TRAM-Fisher (Sherborne et al., ICLR 2024): FSAM's perturbation
    `ε = ρ D g / sqrt(gᵀ D g)`, `D = (1 + η g²)⁻¹`, where `g` (the gradient that
    shapes `ε`, and the one whose loss and metrics are logged) is taken on
    inputs plus `N(0, σ²)` noise: two passes per step, as FSAM.

    `TRAM(model, variant="fisher", ...)` (0.1) still makes one, with a
    `DeprecationWarning`.

    Args:
        model: the `keras.Model` to train.
        rho: ρ, the radius: a finite number >= 0 or a schedule of it
            (`keras_tram.schedule`).
        eta: η, the weight of the diagonal Fisher estimate `g²`, >= 0.
        noise_stddev: σ, >= 0.
        noise_layer: where the noise goes for token-id models (a layer or its
            name); found automatically for keras-hub backbones and models
            with a `keras.layers.Embedding`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.TRAMFisher(model, rho=0.1, eta=0.1, noise_stddev=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    assert np.allclose(history.history["radius"], 0.1)  # the constant ρ
    ```
    """

    variant = "fisher"  # TRAM's name for it, as `wrap` and `TRAM_VARIANTS` know it

    def __init__(self, model, rho=0.1, eta=0.1, noise_stddev=0.1, noise_layer=None, **kwargs):
        super().__init__(
            model, geometry=Fisher(eta), radius=Constant(rho),
            ascent_noise=NoisedInputs(noise_stddev, noise_layer), **kwargs,
        )

    @property
    def rho(self):
        return self.radius.rho

    @property
    def eta(self):
        return self.geometry.eta

    def get_config(self):
        noise = self.ascent_noise.get_config()
        return {
            **self._base_config(),
            "rho": schedule.serialize(self.rho),
            "eta": self.eta,
            "noise_stddev": noise["stddev"],
            "noise_layer": noise["noise_layer"],
        }
