"""SAM: sharpness-aware minimization, the Euclidean ball."""

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces import schedule
from keras_tram.pieces.geometry import Euclidean
from keras_tram.pieces.radius import Constant


@keras.saving.register_keras_serializable(package="keras_tram")
class SAM(SharpnessAware):
    """Sharpness-Aware Minimization (Foret et al., 2021): `ε = ρ g / ‖g‖`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius of the Euclidean ball: a finite number >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` over the updates,
            or a `keras_tram.schedule.FollowLearningRate`. With `rho=0` the
            step is the optimizer's plain step.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SAM(model, rho=0.05)
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)

    # ρ decaying linearly from 0.1 to 0 over 4 updates; the logged radius is
    # the one used (here the mean over the epoch's 4 updates).
    rho = keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=4, end_learning_rate=0.0)
    wrapped = keras_tram.SAM(model, rho=rho)
    wrapped.compile(optimizer="sgd", loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=2, verbose=0)
    assert abs(history.history["radius"][0] - np.mean([0.1, 0.075, 0.05, 0.025])) < 1e-6
    ```
    """

    def __init__(self, model, rho=0.05, **kwargs):
        super().__init__(model, geometry=Euclidean(), radius=Constant(rho), **kwargs)

    @property
    def rho(self):
        return self.radius.rho

    def get_config(self):
        return {**self._base_config(), "rho": schedule.serialize(self.rho)}
