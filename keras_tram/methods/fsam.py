"""FSAM: Fisher SAM, the ball shaped by a diagonal Fisher estimate."""

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces import schedule
from keras_tram.pieces.geometry import Fisher
from keras_tram.pieces.radius import Constant


@keras.saving.register_keras_serializable(package="keras_tram")
class FSAM(SharpnessAware):
    """Fisher SAM (Kim et al., 2022): `ε = ρ D g / sqrt(gᵀ D g)`, `D = (1 + η g²)⁻¹`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0, or a schedule of it
            (`keras_tram.schedule`).
        eta: the weight of the diagonal Fisher estimate `g²`, >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.FSAM(model, rho=0.1, eta=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    assert len(history.history["grad_norm"]) == 2 and min(history.history["grad_norm"]) > 0
    ```
    """

    def __init__(self, model, rho=0.1, eta=0.1, **kwargs):
        super().__init__(model, geometry=Fisher(eta), radius=Constant(rho), **kwargs)

    def get_config(self):
        return {
            **self._base_config(),
            "rho": schedule.serialize(self.radius.rho),
            "eta": self.geometry.eta,
        }
