"""The step of a method that reuses its sharpness direction
(`keras_tram.reuse.Reuse`, `perturbation_every` > 1), as `_step.Algorithm`
runs it: on a full update the method's own perturbed gradient, keeping `g_v`;
on the others the clean gradient plus the reused direction. Which of the two
runs is a `cond` on the update's index (`_backend.branch`), so the step is
compiled once and a reuse step skips the perturbed pass.
"""

from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram.pieces import geometry as geometry_lib


def part_descent(algorithm, step, grad_fn, scaled_grads, loss_scale, unscale, fraction,
                 update):
    """One part's share of the descent gradient (loss-scaled, as the
    optimizer takes it); sets the part's `direction` (and `direction_norm`)
    and, on full steps, its perturbation statistics (0 on the others)."""
    reuse = algorithm.reuse
    names = algorithm.full_step_names
    whole = fraction is None  # else one of several chunks, combined later
    weight = 1.0 if whole else fraction
    previous = [step.value_of(v) for v in reuse.variables]
    previous_norm = step.value_of(reuse.norm)

    def full_step():
        descent, statistics = algorithm.perturbed_gradient(step, grad_fn)
        perturbed = algorithm.mean_gradient(descent, loss_scale if unscale else None, fraction)
        direction, norm = reuse.direction(step.grads, perturbed, step.grad_norm)
        if algorithm.descent is not None:
            descent = algorithm.descent(step, scaled_grads, descent, perturbed)
        exact = True  # whether `norm` is still the norm of `direction`
        if algorithm.perturbation_scope == "per_replica" and (
            _backend.splits_batch_across_replicas()
        ):
            # One direction for every replica: the mean of theirs.
            count = _backend.replica_count()
            direction = [d / count for d in _backend.replica_sum(direction)]
            exact = False
        bound = geometry_lib.global_norm(descent)
        if not whole:
            return descent, bound, _values(statistics, names), [
                weight * d for d in direction
            ], previous_norm
        if update.micro_steps > 1:
            direction = accumulated(direction, previous, update)
            exact = False
        if not exact:
            norm = geometry_lib.global_norm(direction)
        return descent, bound, _values(statistics, names), direction, norm

    def reuse_step():
        # α (‖g‖ / ‖g_v‖) g_v in the units of the descent gradient: loss-scaled,
        # this part's share of the batch, this replica's share of the sum.
        scale = weight * reuse.strength * step.grad_norm * geometry_lib.safe_reciprocal(
            previous_norm
        )
        if unscale:
            scale = scale * loss_scale
        if _backend.splits_batch_across_replicas():
            scale = scale / _backend.replica_count()
        descent = _backend.add_scaled(scaled_grads, previous, scale)
        # Finite exactly when `g + scale · g_v` is (both terms are >= 0, and
        # g_v is finite, a state only finite steps change), without another
        # pass over the weights.
        bound = step.grad_norm + scale
        zero = ops.zeros((), "float32")
        direction = previous if whole else [ops.zeros_like(v) for v in previous]
        return descent, bound, [zero for _ in names], direction, previous_norm

    # Where a `cond` would make the full step far slower than the saving
    # (convolutions under XLA on a CPU), both kinds run and one is selected.
    select = _backend.slow_convolutions_in_branches(algorithm.model)
    descent, step.descent_norm, values, step.direction, step.direction_norm = (
        _backend.branch(step.full, full_step, reuse_step, select=select)
    )
    step.statistics.update(zip(names, values))
    return descent


def direction_updates(algorithm, step, steps, update):
    """`{id(variable): value}`: `g_v` and its norm after the step, from the
    `steps` on the batch's parts (`step` is the whole batch's)."""
    reuse = algorithm.reuse
    if len(steps) == 1:
        direction, norm = steps[0].direction, steps[0].direction_norm
    else:
        previous = [step.value_of(v) for v in reuse.variables]
        direction = accumulated(
            [sum(parts) for parts in zip(*[s.direction for s in steps])], previous, update
        )
        direction = [ops.where(step.full, d, p) for d, p in zip(direction, previous)]
        norm = ops.where(
            step.full, geometry_lib.global_norm(direction), step.value_of(reuse.norm)
        )
    updates = {id(v): d for v, d in zip(reuse.variables, direction)}
    updates[id(reuse.norm)] = norm
    return updates


def accumulated(direction, previous, update):
    """A full update's `g_v` after this micro-step: the mean of its
    micro-steps' (this one's alone without gradient accumulation)."""
    if update.micro_steps == 1:
        return direction
    first = ops.equal(update.micro_step, 0)
    share = 1.0 / update.micro_steps
    return [ops.where(first, 0.0, p) + share * d for d, p in zip(direction, previous)]


def _values(statistics, names):
    return [statistics[name] for name in names]
