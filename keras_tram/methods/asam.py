"""ASAM: adaptive sharpness-aware minimization, the ball scaled by |θ| + η."""

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces import schedule
from keras_tram.pieces.geometry import Adaptive
from keras_tram.pieces.radius import Constant


@keras.saving.register_keras_serializable(package="keras_tram")
class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al., 2021): `ε = ρ T² g / ‖T g‖`, `T = |θ| + η`.

    `eta=0` is the form the TRAM paper uses and compares against.
    `ASAM(model, rho=0.5, eta=0.01, perturb="no_bias_norm")` is the form of
    the original ASAM code, which leaves biases and normalization weights
    unperturbed. With keras-hub's LoRA, `eta=0` does not perturb LoRA's
    zero-initialised matrices (`T = 0` there) until they move: use `eta > 0`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0 (the paper uses 0.5), or a
            schedule of it (`keras_tram.schedule`).
        eta: the offset added to `|θ|`, a finite number >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.ASAM(model, rho=0.5, eta=0.0)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    assert history.history["radius"] == [0.5, 0.5]

    # The original ASAM code's form: biases and normalization weights unperturbed.
    wrapped = keras_tram.ASAM(model, rho=0.5, eta=0.01, perturb="no_bias_norm")
    selected = keras_tram.selection.selected(wrapped, wrapped.perturb)
    assert [v.name for v in selected] == ["kernel"]
    ```
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
        return {**self._base_config(), "rho": schedule.serialize(self.rho), "eta": self.eta}
