"""Where the perturbation radius comes from.

A radius source is called once per training step with the step's
`keras_tram.Step` and returns a float32 scalar `r`; the perturbation is
`ε = r · u` with `u` the geometry's direction.

    >>> from keras_tram import radius
    >>> float(radius.Constant(0.05)(step=None))
    0.05
"""

import keras
from keras import ops

from keras_tram._validation import check_non_negative


class Radius:
    """Base class: subclasses implement `__call__(step)`."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_tram")
class Constant(Radius):
    """A fixed radius `rho`, as in SAM, ASAM and FSAM."""

    def __init__(self, rho):
        self.rho = check_non_negative("rho", rho)

    def __call__(self, step):
        return ops.convert_to_tensor(self.rho, dtype="float32")

    def get_config(self):
        return {"rho": self.rho}
