"""The method, written once: one stateless sharpness-aware step in `keras.ops`.

`Algorithm.run` takes the values of the model's variables and a batch and
returns the gradient to apply with whether it is finite; the trainer
(`_trainer.py`) fits that into Keras's per-backend `train_step`. The pieces
it composes (geometry, radius, penalty, references) read the step through
`Step`.
"""

from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from keras_tram._keras import compat as _compat
from keras_tram._ops import backend as _backend
from keras_tram._step import batch as _batch
from keras_tram._step import noise as _noise
from keras_tram._step import perturbation as _perturbed
from keras_tram._step import reuse_step as _reusing
from keras_tram._step.view import Step
from keras_tram.pieces import geometry as geometry_lib
from keras_tram.pieces import radius as radius_lib
from keras_tram.pieces import reuse as reuse_lib
from keras_tram.pieces import schedule as schedule_lib

# The statistics of the perturbation itself, which a step that reuses the
# sharpness direction does not have (and does not log).
PERTURBATION_STATISTICS = ("radius", "relative_perturbation", "divergence")


class Pass(NamedTuple):
    """What one differentiated pass gives besides its gradient."""

    loss: Any  # the loss `compute_loss` gives (regularization in, penalty out)
    y_pred: Any
    non_trainable: Any  # the non-trainable values after the pass
    metrics: Any  # the metric values after `compute_loss`
    statistics: dict  # the penalty's divergence and value, if any


class Update(NamedTuple):
    """Where a step stands among the optimizer's updates."""

    applies: Any = True  # whether the optimizer changes the weights this step
    index: Any = 0  # the update's index t (the optimizer's `iterations`)
    micro_step: Any = 0  # this step's place among the update's micro-steps
    micro_steps: int = 1  # micro-steps per update (gradient accumulation)
    learning_rate: Any = None  # the optimizer's, if a piece follows it
    initial_learning_rate: Any = None  # the one of update 0, likewise


class Result(NamedTuple):
    """What a step gives the trainer."""

    grads: list  # to apply at the step's weights, still loss-scaled
    finite: Any  # whether every gradient, radius and divergence is finite
    step: Step  # the clean pass: loss, predictions, statistics, new state


class Algorithm:
    """One sharpness-aware step, stateless: see `SharpnessAware` for the method.

    Args:
        model: the Keras model being trained (the wrapper): its
            `stateless_call`, `stateless_compute_loss` and variables.
        geometry, radius, penalty, ascent_noise, descent: the method's pieces.
        reuse: a `keras_tram.reuse.Reuse`: how often the full step runs
            (None: every update).
        perturbation_scope, perturbation_chunks, log_relative_perturbation:
            as for `SharpnessAware`.
        seed_generator: the generator input noise is drawn from, if any
            piece draws noise.
        perturbation: a `_perturbed.Perturbation`: which trainable weights
            the geometry perturbs (`keras_tram.selection`) and which of them
            are embedding tables; set with `select` when the wrapper is built.
    """

    def __init__(self, model, geometry, radius, penalty, ascent_noise, perturbation_scope,
                 perturbation_chunks, log_relative_perturbation, seed_generator=None,
                 reuse=None, descent=None):
        self.model = model
        self.descent = descent
        self.perturbation = _perturbed.Perturbation()
        self.reuse = reuse_lib.Reuse() if reuse is None else reuse
        self.geometry = geometry
        self.radius = radius
        self.penalty = penalty
        self.ascent_noise = ascent_noise
        self.perturbation_scope = perturbation_scope
        self.perturbation_chunks = perturbation_chunks
        self.log_relative_perturbation = log_relative_perturbation
        self.components = [c for c in (radius, penalty) if c is not None]
        self.seed_generator = seed_generator
        self.noise = None if seed_generator is None else _noise.InputNoise(
            model.model, seed_generator
        )
        trust_region_radius = isinstance(radius, radius_lib.TrustRegion)
        self.penalty_divergence_name = (
            "penalty_divergence" if trust_region_radius else "divergence"
        )
        names = []
        if geometry is not None:
            names.append("radius")
            if log_relative_perturbation:
                names.append("relative_perturbation")
        if trust_region_radius:
            names.append("divergence")
        if penalty is not None:
            names += [self.penalty_divergence_name, "penalty"]
        self.statistic_names = tuple(names + ["grad_norm"])
        self.full_step_names = tuple(
            name for name in names if name in PERTURBATION_STATISTICS
        ) if self.reuse.skips else ()
        self._index = None
        self.reads_learning_rate = any(
            getattr(c, "follows_learning_rate", False) for c in (radius, penalty)
        )

    def select(self, positions):
        """Perturb only the trainable weights at `positions` (None: all);
        embedding tables among them on the rows a batch looks up."""
        self.perturbation = _perturbed.Perturbation(
            positions, _perturbed.tables(self.model, positions)
        )

    @staticmethod
    def uses_noise(radius, penalty, ascent_noise):
        """Whether a method made of these pieces draws input noise."""
        return ascent_noise is not None or any(
            c is not None and c.uses_noise for c in (radius, penalty)
        )

    def index_of(self, variable):
        """The position of one of the model's non-trainable variables."""
        if self._index is None:
            variables = self.model.non_trainable_variables
            self._index = {id(v): i for i, v in enumerate(variables)}
        return self._index[id(variable)]

    def forward(self, weights, non_trainable, x, noise=None, rows=None):
        """`(y_pred, non_trainable, losses)` of the model at `weights` in
        training mode, with `noise` (a `NoisedInputs`) on rows `rows`."""
        if noise is None:
            return self.model.stateless_call(
                weights, non_trainable, x, training=True, return_losses=True
            )
        seed = non_trainable[self.index_of(self.seed_generator.state)]
        with self.noise.applied(noise, x, seed, rows) as inputs:
            return self.model.stateless_call(
                weights, non_trainable, inputs, training=True, return_losses=True
            )

    def perturbation_sum(self, values):
        if self.perturbation_scope == "global":
            return _backend.replica_sum(values)
        return list(values)

    # ---------------------------------------------------------------- run

    def run(self, weights, non_trainable, metrics, x, y, sample_weight, loss_scale,
            unscale, update=Update()):
        """The step on a batch: a `Result`.

        `loss_scale` is the factor the optimizer's `scale_loss` multiplies the
        loss by; `unscale` says whether the optimizer expects gradients of
        the scaled loss (then `g` for the perturbation is unscaled here);
        `update` is an `Update`.
        """
        full = self.reuse.is_full(update.index) if self.geometry is not None else True
        at = schedule_lib.At(update.index, update.learning_rate, update.initial_learning_rate)
        chunks = self._chunk_count()
        if chunks == 1:
            parts = [(x, y, sample_weight, None, None)]
        else:
            parts = _split_batch(x, y, sample_weight, chunks)
        steps, descent_grads = [], None
        state = non_trainable
        for part_x, part_y, part_weight, fraction, rows in parts:
            step = Step(self, part_x, part_y, part_weight, weights, state, rows)
            step.full = full
            step.at = at
            grads = self._part_step(step, metrics, loss_scale, unscale, fraction, update)
            descent_grads = grads if descent_grads is None else [
                a + b for a, b in zip(descent_grads, grads)
            ]
            # The next part starts where this one left the model's state
            # (BatchNorm statistics, dropout seeds), with the same noise seed.
            state, metrics = self._keep_noise_seed(step.new_non_trainable, state), step.new_metrics
            steps.append(step)
        step = steps[0] if chunks == 1 else self._whole_batch(steps, parts, x, y, sample_weight)
        step.non_trainable = non_trainable
        step.applies_update = update.applies
        step.full = full
        step.at = at
        step.new_non_trainable = self._with_state_updates(step, state, steps, update)

        # One norm per gradient is a cheaper finiteness check than one per
        # element; a norm that overflows float32 also counts as non-finite.
        norms = [s.descent_norm for s in steps]
        if any(norm is None for norm in norms):
            norms = [geometry_lib.global_norm(descent_grads)]
        checks = norms + [
            ops.cast(v, "float32") for v in step.statistics.values()
        ]
        finite = ops.all(ops.isfinite(ops.stack(checks)))
        # Replicas skip or apply a step together.
        (non_finite,) = _backend.replica_sum([1.0 - ops.cast(finite, "float32")])
        return Result(descent_grads, ops.equal(non_finite, 0.0), step)

    def _pass(self, weights, step, metrics, loss_scale, noise=None, at_step_weights=True):
        """`(scaled objective, Pass)` at `weights`: the loss-scaled objective
        to differentiate (the loss plus any penalty) and the pass's results."""
        y_pred, non_trainable, losses = self.forward(
            weights, step.non_trainable, step.x, noise, step.rows
        )
        loss, _, metrics = _compat.stateless_compute_loss(
            self.model, losses, weights, non_trainable, metrics,
            step.x, step.y, y_pred, step.sample_weight,
        )
        objective, statistics = loss, {}
        if self.penalty is not None:
            d, penalty = self.penalty(step, weights, y_pred, at_step_weights)
            statistics = {self.penalty_divergence_name: d, "penalty": self.penalty.weight * d}
            objective = loss + ops.cast(penalty, loss.dtype)
        scaled = objective * ops.cast(loss_scale, objective.dtype)
        return scaled, Pass(loss, y_pred, non_trainable, metrics, statistics)

    def _part_step(self, step, metrics, loss_scale, unscale, fraction, update):
        """The method on one part of the batch (all of it unless it is split
        into chunks); returns that part's share of the descent gradient."""
        objective_scale = loss_scale if fraction is None else loss_scale * fraction

        def grad_fn(w, noise=None, at_step_weights=True):
            return _backend.value_and_grad(
                lambda w: self._pass(w, step, metrics, objective_scale, noise, at_step_weights)
            )(w)

        ascent_noise = self.ascent_noise
        if ascent_noise is not None and self.reuse.skips:
            # A step in between descends along the clean gradient: its first
            # pass is on clean inputs (noise of standard deviation 0).
            ascent_noise = _noise.scaled(ascent_noise, ops.cast(step.full, "float32"))
        (_, clean), scaled_grads = grad_fn(step.weights, ascent_noise)
        step.loss = clean.loss
        step.new_non_trainable, step.new_metrics = clean.non_trainable, clean.metrics
        step.statistics.update(clean.statistics)
        step.y_pred = keras.tree.map_structure(ops.stop_gradient, clean.y_pred)
        step.grads = grads = self.mean_gradient(
            scaled_grads, loss_scale if unscale else None, fraction
        )
        step.grad_norm = step.statistics["grad_norm"] = geometry_lib.global_norm(grads)
        if self.geometry is None:
            return scaled_grads
        if not self.reuse.skips:
            descent, statistics = self.perturbed_gradient(step, grad_fn)
            step.statistics.update(statistics)
            if self.descent is not None:
                perturbed = self.mean_gradient(descent, loss_scale if unscale else None, fraction)
                descent = self.descent(step, scaled_grads, descent, perturbed)
            return descent
        return _reusing.part_descent(
            self, step, grad_fn, scaled_grads, loss_scale, unscale, fraction, update
        )

    def perturbed_gradient(self, step, grad_fn):
        """The loss-scaled gradient at the perturbed weights, and the
        perturbation's statistics (`radius`, ...)."""
        kept, step.statistics = step.statistics, {}
        radius = ops.cast(self.radius(step), "float32")
        step.statistics["radius"] = radius
        perturbed, epsilon_norm = self.perturbation.apply(
            self.geometry, step.grads, step.weights, radius, step.grad_norm,
            row_wise=_backend.dynamic_shapes(self.model), norm=self.log_relative_perturbation,
        )
        if self.log_relative_perturbation:
            step.statistics["relative_perturbation"] = epsilon_norm * geometry_lib.safe_reciprocal(
                geometry_lib.global_norm(step.weights)
            )
        statistics, step.statistics = step.statistics, kept
        statistics = {name: ops.cast(value, "float32") for name, value in statistics.items()}
        return grad_fn(perturbed, at_step_weights=False)[1], statistics

    def mean_gradient(self, scaled_grads, loss_scale, fraction):
        """`g`, the gradient of the mean loss over the batch the perturbation
        is for, in float32: loss scaling (`loss_scale`, None if the gradients
        are not scaled) and the part's weight undone, and summed over the
        replicas that share the perturbation."""
        grads = geometry_lib.as_float32(scaled_grads)
        unscale = loss_scale
        if fraction is not None:
            unscale = fraction if unscale is None else unscale * fraction
        if unscale is not None:
            grads = [g / unscale for g in grads]
        if not _backend.splits_batch_across_replicas():
            return grads
        if self.perturbation_scope == "global" and self.geometry is not None:
            return _backend.replica_sum(grads)
        # Each replica's loss is scaled by 1 / replicas so that the
        # optimizer's sum of gradients is the mean; undo it for this
        # replica's own mean. (Without a geometry `g` only gives the logged
        # norm, which is then the replicas' mean norm: summing the gradient
        # for a log would double the step's communication.)
        replicas = float(_backend.replica_count())
        return [g * replicas for g in grads]

    def _chunk_count(self):
        """How many parts of the batch get a perturbation of their own."""
        chunks = self.perturbation_chunks
        if self.geometry is None:
            return 1
        if self.perturbation_scope == "per_replica" and not (
            _backend.splits_batch_across_replicas()
        ):
            # One step sees the global batch (JAX's keras.distribution):
            # a replica's perturbation is a chunk's.
            chunks *= _backend.replica_count()
        return chunks

    def _whole_batch(self, steps, parts, x, y, sample_weight):
        """One `Step` for the whole batch from the steps on its parts: the
        loss weighted by the parts' sizes, the predictions concatenated, the
        statistics averaged over the parts."""
        step = Step(self, x, y, sample_weight, steps[0].weights, None)
        fractions = [ops.cast(part[3], "float32") for part in parts]
        step.loss = sum(
            ops.cast(f, part.loss.dtype) * part.loss for f, part in zip(fractions, steps)
        )
        step.y_pred = keras.tree.map_structure(
            lambda *tensors: ops.concatenate(tensors, axis=0), *[s.y_pred for s in steps]
        )
        step.statistics = {
            name: sum(ops.cast(s.statistics[name], "float32") for s in steps) / len(steps)
            for name in steps[0].statistics
        }
        step.new_metrics = steps[-1].new_metrics
        return step

    def _keep_noise_seed(self, values, old_values):
        if self.seed_generator is None:
            return values
        index = self.index_of(self.seed_generator.state)
        return [old if i == index else value
                for i, (value, old) in enumerate(zip(values, old_values))]

    def _with_state_updates(self, step, state, steps, update):
        """`state` with the components' updates (references, moving averages),
        the sharpness direction and the input-noise seed moved on."""
        updates = {}
        if self.reuse.variables and self.geometry is not None:
            updates.update(_reusing.direction_updates(self, step, steps, update))
        for component in self.components:
            for variable, value in component.update(step):
                if step.applies_update is not True:
                    # References follow the optimizer's updates, not its
                    # accumulating micro-batches.
                    value = ops.where(step.applies_update, value, step.value_of(variable))
                updates[id(variable)] = value
        if self.seed_generator is not None:
            seed = self.seed_generator.state
            with keras.StatelessScope(state_mapping=[(seed, step.value_of(seed))]) as scope:
                self.seed_generator.next()
            updates[id(seed)] = scope.get_current_value(seed)
        return [
            ops.cast(updates[id(v)], v.dtype) if id(v) in updates else value
            for v, value in zip(self.model.non_trainable_variables, state)
        ]


def _split_batch(x, y, sample_weight, chunks):
    """`chunks` consecutive parts of a batch, as `(x, y, sample_weight,
    fraction, (start, size))`: sizes differ by at most one, `fraction` is a
    part's share of the batch, `start` its first row, `size` the batch's."""
    size = _batch.size(x)
    if isinstance(size, int) and size < chunks:
        raise ValueError(
            f"`perturbation_chunks` splits each batch into {chunks} parts, but a "
            f"batch has only {size} examples. Use larger batches or fewer chunks."
        )
    parts = []
    for k in range(chunks):
        start, stop = (k * size) // chunks, ((k + 1) * size) // chunks
        fraction = ops.cast(stop - start, "float32") / ops.cast(size, "float32")
        parts.append((*_batch.rows((x, y, sample_weight), start, stop), fraction, (start, size)))
    return parts
