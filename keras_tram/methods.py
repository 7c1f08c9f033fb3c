"""The named methods: small configurations of `SharpnessAware`."""

import keras

from keras_tram.geometry import Adaptive
from keras_tram.geometry import Euclidean
from keras_tram.radius import Constant
from keras_tram.wrapper import SharpnessAware


@keras.saving.register_keras_serializable(package="keras_tram")
class SAM(SharpnessAware):
    """Sharpness-Aware Minimization (Foret et al., 2021): `ε = ρ g / ‖g‖`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius of the Euclidean ball, a finite number >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SAM(model, rho=0.05)
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    ```
    """

    def __init__(self, model, rho=0.05, **kwargs):
        super().__init__(model, geometry=Euclidean(), radius=Constant(rho), **kwargs)

    @property
    def rho(self):
        return self.radius.rho

    def get_config(self):
        return {**self._base_config(), "rho": self.rho}


@keras.saving.register_keras_serializable(package="keras_tram")
class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al., 2021): `ε = ρ T² g / ‖T g‖`, `T = |θ| + η`.

    `eta=0` is the form the TRAM paper uses and compares against.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0 (the paper uses 0.5).
        eta: the offset added to `|θ|`, a finite number >= 0.
    """

    def __init__(self, model, rho=0.5, eta=0.0, **kwargs):
        super().__init__(model, geometry=Adaptive(eta), radius=Constant(rho), **kwargs)

    @property
    def rho(self):
        return self.radius.rho

    @property
    def eta(self):
        return self.geometry.eta

    def get_config(self):
        return {**self._base_config(), "rho": self.rho, "eta": self.eta}
