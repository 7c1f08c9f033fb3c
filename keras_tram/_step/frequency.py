"""How often the full step runs, chosen once when the wrapper is built:
never (`Never`: the penalty methods' plain step on the clean gradient), on
every update (`Always`), or every k-th update with LookSAM's reuse of the
sharpness direction in between (`Every`, `keras_tram.reuse.Reuse`).

Each takes the part's clean pass, a function that runs the full step
(radius, perturbation, perturbed pass, descent) and whether this is a full
step, and returns the part's `PartDescent`. That decision is a Python bool
when the trainer takes it before the step (`Every.is_full_at`: a step
function per kind of step, picked from the update index), or a boolean
tensor (`is_full`) where one compiled execution holds several updates
(`steps_per_execution`): then `Every` branches with a `cond`
(`_backend.branch`), and a step in between still skips the perturbed pass.
"""

from typing import Any
from typing import NamedTuple

from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram.pieces import geometry as geometry_lib

# The statistics of the perturbation itself, which a step that reuses the
# sharpness direction does not have (and does not log).
PERTURBATION_STATISTICS = ("radius", "relative_perturbation", "divergence")


class PartDescent(NamedTuple):
    """A part's share of the descent gradient, and what comes with it."""

    grads: list  # loss-scaled, as the optimizer takes them
    bound: Any = None  # finite exactly when `grads` are (None: take their norm)
    statistics: dict = {}  # the perturbation's: radius, divergence, ...
    direction: Any = None  # the part's share of `g_v` after the step (`Every`)
    direction_norm: Any = None


class Never:
    """No perturbation: the clean gradient (of the penalized loss)."""

    def is_full(self, at):
        return True

    alternates = False  # whether full steps and steps in between alternate
    full_step_names = ()  # the statistics logged over the full steps only
    keeps_direction = False  # whether a full step keeps `g_v` for later steps

    def descent(self, full_step, clean, step, part, scaling, full):
        return PartDescent(clean.scaled_grads)

    def state_updates(self, parts, step, full):
        return {}


class Always(Never):
    """The full step on every update."""

    def descent(self, full_step, clean, step, part, scaling, full):
        result = full_step()
        return PartDescent(result.grads, statistics=result.statistics)


class Every(Never):
    """The full step every `reuse.every` updates, its sharpness direction
    `g_v` reused in between.

    Args:
        reuse: the `keras_tram.reuse.Reuse` (its variables hold `g_v`).
        model: the wrapper, whose compiled form says whether a `cond` runs
            its convolutions slowly (then both kinds of step run and one is
            selected).
        per_replica: whether replicas perturb on their own (then one `g_v`,
            their mean, is kept for all).
        names: the perturbation's statistics this method logs.
    """

    keeps_direction = True
    alternates = True

    def __init__(self, reuse, model, per_replica, names):
        self.reuse = reuse
        self.model = model
        self.per_replica = per_replica
        self.full_step_names = tuple(name for name in names if name in PERTURBATION_STATISTICS)

    def is_full(self, at):
        return self.reuse.is_full(at.index)

    def is_full_at(self, index):
        """Whether the update of (Python int) index `index` is a full step."""
        return self.reuse.is_full(index)

    def descent(self, full_step, clean, step, part, scaling, full):
        """On a full update the full step's descent, keeping its `g_v`; on the
        others the clean gradient plus the reused direction. The statistics
        of the perturbation are 0 on the steps in between."""
        reuse, at = self.reuse, step.at
        whole = part.fraction is None  # else one of several chunks, combined later
        weight = 1.0 if whole else part.fraction
        previous = [step.value_of(v) for v in reuse.variables]
        previous_norm = step.value_of(reuse.norm)

        def full_update():
            full = full_step()
            direction, norm = reuse.direction(full.clean[0], full.perturbed(), full.clean[1])
            exact = True  # whether `norm` is still the norm of `direction`
            if self.per_replica and _backend.splits_batch_across_replicas():
                # One direction for every replica: the mean of theirs.
                count = _backend.replica_count()
                direction = [d / count for d in _backend.replica_sum(direction)]
                exact = False
            bound = geometry_lib.global_norm(full.grads)
            values = [full.statistics[name] for name in self.full_step_names]
            if not whole:
                return full.grads, bound, values, [weight * d for d in direction], previous_norm
            if at.micro_steps > 1:
                direction = accumulated(direction, previous, at)
                exact = False
            if not exact:
                norm = geometry_lib.global_norm(direction)
            return full.grads, bound, values, direction, norm

        def update_in_between():
            # α (‖g‖ / ‖g_v‖) g_v in the units of the descent gradient: loss-scaled,
            # this part's share of the batch, this replica's share of the sum.
            scale = weight * reuse.strength * step.grad_norm * geometry_lib.safe_reciprocal(
                previous_norm
            )
            if scaling.unscale:
                scale = scale * scaling.loss_scale
            if _backend.splits_batch_across_replicas():
                scale = scale / _backend.replica_count()
            grads = _backend.add_scaled(clean.scaled_grads, previous, scale)
            # Finite exactly when `g + scale · g_v` is (both terms are >= 0, and
            # g_v is finite, a state only finite steps change), without another
            # pass over the weights.
            bound = step.grad_norm + scale
            zero = ops.zeros((), "float32")
            direction = previous if whole else [ops.zeros_like(v) for v in previous]
            return grads, bound, [zero for _ in self.full_step_names], direction, previous_norm

        # Where a `cond` would make the full step far slower than the saving
        # (convolutions under XLA on a CPU), both kinds run and one is selected.
        select = _backend.slow_convolutions_in_branches(self.model)
        grads, bound, values, direction, norm = _backend.branch(
            full, full_update, update_in_between, select=select
        )
        return PartDescent(grads, bound, dict(zip(self.full_step_names, values)), direction, norm)

    def state_updates(self, parts, step, full):
        """`{id(variable): value}`: `g_v` and its norm after the step, from the
        `PartDescent`s of the batch's parts (`step` is the whole batch's)."""
        reuse = self.reuse
        if full is False:  # decided before the step: g_v stays
            return {}
        if len(parts) == 1:
            direction, norm = parts[0].direction, parts[0].direction_norm
        else:
            previous = [step.value_of(v) for v in reuse.variables]
            direction = accumulated(
                [sum(shares) for shares in zip(*[p.direction for p in parts])], previous, step.at
            )
            direction = [ops.where(full, d, p) for d, p in zip(direction, previous)]
            norm = ops.where(full, geometry_lib.global_norm(direction), step.value_of(reuse.norm))
        updates = {id(v): d for v, d in zip(reuse.variables, direction)}
        updates[id(reuse.norm)] = norm
        return updates


def accumulated(direction, previous, at):
    """A full update's `g_v` after this micro-step: the mean of its
    micro-steps' (this one's alone without gradient accumulation)."""
    if at.micro_steps == 1:
        return direction
    first = ops.equal(at.micro_step, 0)
    share = 1.0 / at.micro_steps
    return [ops.where(first, 0.0, p) + share * d for d, p in zip(direction, previous)]
