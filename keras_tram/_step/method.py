"""`Method`: the pieces a method is made of, and the policies its step is
built with (how often the full step runs, how the batch is split, which
replicas share a perturbation), chosen from them once."""

from typing import Any
from typing import NamedTuple

from keras_tram._step import frequency as frequency_lib
from keras_tram._step import policies


class Method(NamedTuple):
    """The pieces a method is made of (see `SharpnessAware`)."""

    geometry: Any = None
    radius: Any = None
    penalty: Any = None
    ascent_noise: Any = None
    descent: Any = None
    reuse: Any = None
    perturbation_scope: str = "global"
    perturbation_chunks: int = 1
    log_relative_perturbation: bool = False

    @property
    def components(self):
        """The pieces that keep state in variables of the wrapper."""
        return [c for c in (self.radius, self.penalty) if c is not None]

    @property
    def uses_noise(self):
        return self.ascent_noise is not None or any(c.uses_noise for c in self.components)

    @property
    def reads_learning_rate(self):
        return any(getattr(c, "follows_learning_rate", False) for c in self.components)

    @property
    def penalty_divergence_name(self):
        radius_names = () if self.radius is None else self.radius.statistic_names
        return "penalty_divergence" if "divergence" in radius_names else "divergence"

    @property
    def full_step_names(self):
        """What a step logs over the full steps only."""
        return self.frequency().full_step_names

    @property
    def statistic_names(self):
        """What a step logs, in order."""
        names = []
        if self.geometry is not None:
            names.append("radius")
            if self.log_relative_perturbation:
                names.append("relative_perturbation")
            names += list(self.radius.statistic_names)
        if self.penalty is not None:
            names += [self.penalty_divergence_name, "penalty"]
        return tuple(names + ["grad_norm"])

    def frequency(self, model=None):
        """How often the full step runs (`frequency`)."""
        if self.geometry is None:
            return frequency_lib.Never()
        if not self.reuse.skips:
            return frequency_lib.Always()
        return frequency_lib.Every(
            self.reuse, model, self.perturbation_scope == "per_replica", self.statistic_names
        )

    def split(self):
        """Which parts of the batch get a perturbation of their own."""
        if self.geometry is None or (
            self.perturbation_chunks == 1 and self.perturbation_scope == "global"
        ):
            return policies.WholeBatch()
        return policies.Chunks(
            self.perturbation_chunks, self.perturbation_scope == "per_replica"
        )

    def scope(self):
        """Which replicas share a perturbation."""
        if self.geometry is not None and self.perturbation_scope == "global":
            return policies.Shared()
        return policies.PerReplica()
