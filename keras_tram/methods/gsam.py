"""GSAM: SAM's perturbation with the surrogate-gap descent."""

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces import schedule
from keras_tram.pieces.descent import SurrogateGap
from keras_tram.pieces.geometry import Euclidean
from keras_tram.pieces.radius import Constant


@keras.saving.register_keras_serializable(package="keras_tram")
class GSAM(SharpnessAware):
    """Surrogate Gap Guided SAM (Zhuang et al., ICLR 2022).

    SAM's perturbation `ε = ρ_t g / ‖g‖`, then a descent along
    `g_p − α · g_⊥`, where `g_p = ∇L(θ + ε)` and `g_⊥` is the component of
    the clean gradient `g` orthogonal to `g_p`
    (`keras_tram.descent.SurrogateGap`). By default ρ follows the learning
    rate (`keras_tram.schedule.FollowLearningRate(rho_max=0.05,
    rho_min=0.0)`): ρ_max at the optimizer's initial learning rate, falling
    with it, so that with a constant learning rate ρ is 0.05 throughout.

    Args:
        model: the `keras.Model` to train.
        rho: the radius: None (the default above), a number, a
            `LearningRateSchedule` or a `FollowLearningRate`.
        alpha: α, a finite number >= 0 (default 0.4); 0 is SAM.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    rho = keras_tram.schedule.FollowLearningRate(rho_max=0.1, rho_min=0.02)
    wrapped = keras_tram.GSAM(model, rho=rho, alpha=0.3)
    lr = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=8)
    wrapped.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=2, epochs=2, verbose=0)
    assert history.history["radius"][1] < history.history["radius"][0]
    ```
    """

    def __init__(self, model, rho=None, alpha=0.4, **kwargs):
        if rho is None:
            rho = schedule.FollowLearningRate(rho_max=0.05, rho_min=0.0)
        super().__init__(
            model, geometry=Euclidean(), radius=Constant(rho),
            descent=SurrogateGap(alpha), **kwargs,
        )

    @property
    def rho(self):
        return self.radius.rho

    @property
    def alpha(self):
        return self.descent.alpha

    def get_config(self):
        config = self._base_config()
        return {**config, "rho": schedule.serialize(self.rho), "alpha": self.alpha}
