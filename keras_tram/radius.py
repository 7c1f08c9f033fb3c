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

from keras_tram import trust_region
from keras_tram._validation import check_choice
from keras_tram._validation import check_instance
from keras_tram._validation import check_non_negative


class Radius:
    """Base class: subclasses implement `__call__(step)`."""

    def __call__(self, step):
        raise NotImplementedError

    def build(self, wrapper):
        """Creates any state the radius keeps, as variables of `wrapper`."""

    def fill(self, trainable_variables):
        """Called when training starts, before any step."""

    def update(self, step):
        """End-of-step state updates, `[(variable, new_value), ...]`."""
        return []

    @property
    def uses_noise(self):
        return False

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


@keras.saving.register_keras_serializable(package="keras_tram")
class TrustRegion(Radius):
    """TRAM's radius: the divergence `d` between reference and current predictions.

    `r = min(scale · d, max_radius)`, with `d` measured on the current batch
    between `reference.predictions` and the clean predictions, with no
    gradient through it. The defaults (`scale=1`, no cap) are the paper's
    method, which adds no hyperparameter.

    Args:
        reference: a `keras_tram.trust_region.Reference`.
        divergence: `"kl"` (`KL(reference ‖ current)`), `"reverse_kl"` or
            `"symmetric_kl"`.
        scale: a finite number >= 0 multiplying `d`.
        max_radius: a finite number >= 0 capping the radius, or None.
        from_logits: whether the model outputs logits (else probabilities).
        output_key: the entry of a dict output that holds the logits.
    """

    def __init__(self, reference, divergence="kl", scale=1.0, max_radius=None,
                 from_logits=True, output_key="logits"):
        self.reference = check_instance("reference", reference, trust_region.Reference)
        self.divergence = check_choice("divergence", divergence, trust_region.DIVERGENCES)
        self.scale = check_non_negative("radius_scale", scale)
        self.max_radius = (
            None if max_radius is None else check_non_negative("max_radius", max_radius)
        )
        self.from_logits = bool(from_logits)
        self.output_key = output_key

    def distance(self, step):
        """`d` for this step, without gradient."""
        d = trust_region.measure(
            self.reference, step, step.weights, step.y_pred, self.divergence,
            self.from_logits, self.output_key,
        )
        return ops.stop_gradient(d)

    def build(self, wrapper):
        self.reference.build(wrapper)

    def fill(self, trainable_variables):
        self.reference.fill(trainable_variables)

    def update(self, step):
        return self.reference.update(step)

    @property
    def uses_noise(self):
        return self.reference.uses_noise

    def __call__(self, step):
        d = self.distance(step)
        step.statistics["divergence"] = d
        radius = self.scale * d
        if self.max_radius is not None:
            radius = ops.minimum(radius, self.max_radius)
        return radius

    def get_config(self):
        return {
            "reference": keras.saving.serialize_keras_object(self.reference),
            "divergence": self.divergence,
            "scale": self.scale,
            "max_radius": self.max_radius,
            "from_logits": self.from_logits,
            "output_key": self.output_key,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["reference"] = keras.saving.deserialize_keras_object(config["reference"])
        return cls(**config)

