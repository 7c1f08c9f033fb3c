"""Where the perturbation radius comes from.

A radius source is called once per training step with the step's
`keras_tram.Step` and returns a float32 scalar `r`; the geometry turns it into
the perturbation `ε = r · u`, `u` its unit direction.

    >>> from keras_tram import radius
    >>> round(float(radius.Constant(0.05)(step=None)), 6)
    0.05
"""

import keras
from keras import ops

from keras_tram.pieces import divergences
from keras_tram.pieces import schedule
from keras_tram.pieces._component import Component
from keras_tram.pieces._validation import check_fraction


class Radius(Component):
    """Base class: subclasses implement `__call__(step)`; one that keeps state
    implements the `Component` methods too, and one that logs what it
    measured (TRAM's `divergence`) names it in `statistic_names` and returns
    it from `with_statistics`."""

    statistic_names = ()

    def __call__(self, step):
        raise NotImplementedError

    def with_statistics(self, step):
        """`(r, {name: value})`: the radius for `step`, and the values of
        `statistic_names` a step logs with it."""
        return self(step), {}

    @property
    def follows_learning_rate(self):
        """Whether the radius reads the optimizer's learning rate."""
        return False


@keras.saving.register_keras_serializable(package="keras_tram")
class Constant(Radius):
    """The radius `rho` of SAM, ASAM and FSAM: a number, or scheduled over the
    updates (a `keras.optimizers.schedules.LearningRateSchedule` or a
    `keras_tram.schedule.FollowLearningRate`; `keras_tram.schedule`)."""

    def __init__(self, rho):
        self.rho = schedule.check("rho", rho)

    def __call__(self, step):
        return schedule.value(self.rho, schedule.At() if step is None else step.at)

    @property
    def follows_learning_rate(self):
        return schedule.follows_learning_rate(self.rho)

    def get_config(self):
        return {"rho": schedule.serialize(self.rho)}


@keras.saving.register_keras_serializable(package="keras_tram")
class TrustRegion(divergences.Distance, Radius):
    """TRAM's radius: the divergence `d` between reference and current predictions.

    `r = min(radius_scale · d, max_radius)`, with `d` measured on the current batch
    between `reference.predictions` and the clean predictions, with no
    gradient through it. The defaults (`radius_scale=1`, no cap) are the paper's
    method, which adds no hyperparameter.

    Args:
        reference: a `keras_tram.references.Reference`.
        divergence: `"kl"` (`KL(reference ‖ current)`), `"reverse_kl"` or
            `"symmetric_kl"`.
        radius_scale: a finite number >= 0 multiplying `d`, or a schedule of
            it (`keras_tram.schedule`).
        max_radius: a finite number >= 0 capping the radius, a schedule of
            it, or None.
        batch_fraction: in (0, 1]: measure `d` on the first
            `ceil(batch_fraction · batch)` examples only, which shrinks the
            reference's extra forward pass to that fraction of the batch
            (1, the default, is the paper's method).
        from_logits: whether the model outputs logits (else probabilities).
        output_key: the entry of a dict output that holds the logits.
        reduction: a `keras_tram.reduction.Reduction`: how the batch's
            divergence becomes `d` (default: the paper's `PerPosition()`;
            `ElementMean()` is the authors' released code's).
    """

    def __init__(self, reference, divergence="kl", radius_scale=1.0, max_radius=None,
                 from_logits=True, output_key="logits", batch_fraction=1.0,
                 reduction=None):
        super().__init__(reference, divergence, from_logits, output_key, reduction)
        self.batch_fraction = check_fraction("batch_fraction", batch_fraction)
        self.radius_scale = schedule.check("radius_scale", radius_scale)
        self.max_radius = (
            None if max_radius is None else schedule.check("max_radius", max_radius)
        )

    statistic_names = ("divergence",)

    def __call__(self, step):
        return self.with_statistics(step)[0]

    def with_statistics(self, step):
        """`(r, {"divergence": d})`."""
        if self.batch_fraction < 1.0:
            step = step.head(self.batch_fraction)
        _, d = self.measure(step, step.weights, step.y_pred, step.perturbation_sum)
        # A KL is never negative; rounding can take it just below 0 (-2e-9
        # seen with LoRA on GPT-2), which must not become a negative radius.
        d = ops.stop_gradient(d)
        d = ops.where(ops.less(d, 0.0), 0.0, d)  # NaN stays NaN, and skips the step
        if schedule.is_constant(self.radius_scale):
            radius = self.radius_scale * d
        else:
            radius = schedule.value(self.radius_scale, step.at) * d
        if self.max_radius is not None:
            radius = ops.minimum(radius, schedule.value(self.max_radius, step.at))
        return radius, {"divergence": d}

    @property
    def follows_learning_rate(self):
        return any(
            schedule.follows_learning_rate(v) for v in (self.radius_scale, self.max_radius)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "radius_scale": schedule.serialize(self.radius_scale),
            "max_radius": None if self.max_radius is None else schedule.serialize(
                self.max_radius
            ),
            "batch_fraction": self.batch_fraction,
        }
