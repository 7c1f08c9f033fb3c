"""The method, written once: one stateless sharpness-aware step in `keras.ops`.

`Algorithm.run` takes the values of the model's variables and a batch and
returns the gradient to apply with whether it is finite; the trainer
(`_keras/trainer.py`) fits that into Keras's per-backend `train_step`. Read
top to bottom, a step is: the clean pass, then (on a full step) the radius,
the perturbation, the perturbed pass and the descent, then the new state.
What varies between methods is in the pieces (`Method`) and in three
policies chosen when the wrapper is built: how often the full step runs
(`frequency`), which parts of the batch are perturbed on their own and which
replicas share a perturbation (`policies`). The pieces read the step through
`view.Step`, which holds values and functions, never the algorithm.
"""

import functools
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from keras_tram._keras import compat as _compat
from keras_tram._ops import backend as _backend
from keras_tram._step import noise as _noise
from keras_tram._step import policies
from keras_tram._step.forward import Forward
from keras_tram._step.forward import NoisedForward
from keras_tram._step.perturbation import Perturbation
from keras_tram._step.view import Step
from keras_tram.pieces import descent as descent_lib
from keras_tram.pieces import geometry as geometry_lib


class Values(NamedTuple):
    """The values of the model's variables a step starts from."""

    weights: list
    non_trainable: list
    metrics: list


class Scaling(NamedTuple):
    """The optimizer's loss scaling: the factor `scale_loss` multiplies the
    loss by, and whether the optimizer expects gradients of the scaled loss
    (then `g` is unscaled for the perturbation)."""

    loss_scale: Any
    unscale: bool


class Pass(NamedTuple):
    """What one differentiated pass gives besides its gradient."""

    loss: Any  # the loss `compute_loss` gives (regularization in, penalty out)
    y_pred: Any
    non_trainable: Any  # the non-trainable values after the pass
    metrics: Any  # the metric values after `compute_loss`
    statistics: dict  # the penalty's divergence and value, if any


class Clean(NamedTuple):
    """A part's clean pass."""

    scaled_grads: list  # of the loss-scaled objective, as the optimizer takes them
    outputs: Pass


class FullStep(NamedTuple):
    """A part's full step."""

    grads: list  # the descent gradient, loss-scaled
    clean: Any  # (g, ‖g‖) the perturbation was taken from
    perturbed: Any  # () -> g_s, the perturbed gradient in float32, loss scaling undone
    statistics: dict  # radius, divergence, relative_perturbation


class Result(NamedTuple):
    """What a step gives the trainer."""

    grads: list  # to apply at the step's weights, still loss-scaled
    finite: Any  # whether every gradient, radius and divergence is finite
    loss: Any  # the clean loss of the whole batch
    y_pred: Any  # the clean predictions
    statistics: dict  # what the step logs, by name
    full: Any  # whether this was a full step
    non_trainable: list  # the variables' values after the step
    metrics: list


class Algorithm:
    """One sharpness-aware step, stateless: see `SharpnessAware` for the method.

    Made once the wrapper is built, and not changed after.

    Args:
        model: the Keras model being trained (the wrapper): its
            `stateless_call`, `stateless_compute_loss` and variables.
        method: the `Method`.
        perturbation: a `_step.perturbation.Perturbation`: which trainable
            weights the geometry perturbs and which are embedding tables.
        seed_generator: the generator input noise is drawn from, if any.
    """

    def __init__(self, model, method, perturbation=None, seed_generator=None):
        self.model = model
        self.method = method
        self.geometry, self.radius, self.penalty = method.geometry, method.radius, method.penalty
        self.descent = descent_lib.AlongPerturbed() if method.descent is None else method.descent
        self.ascent_noise = method.ascent_noise
        self.components = method.components
        self.statistic_names = method.statistic_names
        self.frequency = method.frequency(model)
        self.split = method.split()
        self.scope = method.scope()
        self.perturbation = perturbation or Perturbation()
        self.positions = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self.forward = Forward(model) if seed_generator is None else NoisedForward(
            model, seed_generator, self.positions[id(seed_generator.state)]
        )
        # A reused direction is the small difference of two gradients: under
        # mixed precision a full step that keeps one takes its passes in the
        # variables' dtype (`frequency.Every`).
        self.precise_full_step = self.frequency.keeps_direction and self.forward.reduces_precision

    def run(self, values, batch, scaling, at, full=None):
        """The step on a batch `(x, y, sample_weight)` from `values`, under
        the optimizer's `scaling`, at `at` (`keras_tram.schedule.At`): a
        `Result`. `full`: whether this is a full step, when the trainer
        decided before the step (a Python bool); by default the step decides
        from `at` itself."""
        if len(values.non_trainable) != len(self.positions):
            raise RuntimeError(
                f"The wrapper has {len(values.non_trainable)} non-trainable variables, "
                f"{len(self.positions)} when it was built: variables were added to the "
                "model after it was wrapped. Wrap the model once it is complete."
            )
        if full is None:
            full = self.frequency.is_full(at)
        parts = self.split.parts(*batch)
        state, metrics, outcomes = values.non_trainable, values.metrics, []
        for part in parts:
            step = self._view(part, values.weights, state, at)
            descent, clean = self._part(step, part, metrics, scaling, full)
            outcomes.append((descent, clean))
            # The next part starts where this one left the model's state
            # (BatchNorm statistics, dropout seeds), with the same noise seed.
            state = self.forward.keep_seed(clean.non_trainable, state)
            metrics = clean.metrics
        descents = [d for d, _ in outcomes]
        grads = descents[0].grads
        for other in descents[1:]:
            grads = [a + b for a, b in zip(grads, other.grads)]
        loss, y_pred, statistics = self._whole_batch(outcomes, parts)

        step = self._view(policies.Part(*batch), values.weights, values.non_trainable, at)
        new_state = self._new_state(step, state, descents, full)

        # One norm per gradient is a cheaper finiteness check than one per
        # element; a norm that overflows float32 also counts as non-finite.
        norms = [d.bound for d in descents]
        if any(norm is None for norm in norms):
            norms = [geometry_lib.global_norm(grads)]
        checks = norms + [ops.cast(v, "float32") for v in statistics.values()]
        finite = ops.all(ops.isfinite(ops.stack(checks)))
        # Replicas skip or apply a step together.
        (non_finite,) = _backend.replica_sum([1.0 - ops.cast(finite, "float32")])
        return Result(grads, ops.equal(non_finite, 0.0), loss, y_pred, statistics, full,
                      new_state, metrics)

    def _view(self, part, weights, non_trainable, at):
        return Step((part.x, part.y, part.sample_weight), weights, non_trainable, at,
                    self.forward, self.positions, self.scope.sum, part.rows)

    # ------------------------------------------------------------ one part

    def _part(self, step, part, metrics, scaling, full):
        """The method on one part of the batch (all of it unless it is split
        into chunks): its `PartDescent` and clean `Pass`."""
        objective_scale = scaling.loss_scale if part.fraction is None else (
            scaling.loss_scale * part.fraction
        )
        gradient = functools.partial(self._gradient, step, metrics, objective_scale)

        # The clean pass: the loss, `g` and `‖g‖`. (A step in between full
        # steps descends along the clean gradient: its pass is on clean
        # inputs, where the first gradient of a full step has noise.)
        (_, clean), scaled_grads = gradient(
            step.weights, _noise.on_full_steps(self.ascent_noise, full)
        )
        grads = policies.mean_gradient(scaled_grads, part, scaling, self.scope)
        step = step.after_clean_pass(
            keras.tree.map_structure(ops.stop_gradient, clean.y_pred), clean.loss, grads,
            geometry_lib.global_norm(grads),
        )
        clean = Clean(scaled_grads, clean._replace(
            statistics={**clean.statistics, "grad_norm": step.grad_norm}
        ))
        descent = self.frequency.descent(
            lambda: self._full_step(step, clean, part, scaling, gradient),
            clean, step, part, scaling, full,
        )
        return descent, clean.outputs._replace(
            statistics={**clean.outputs.statistics, **descent.statistics}
        )

    def _full_step(self, step, clean, part, scaling, gradient):
        """Radius → perturbation → perturbed pass → descent, on one part.

        With `precise_full_step`, a clean pass in the variables' dtype first
        gives the `g` the perturbation, the descent and `g_v` take, and the
        perturbed pass runs in that dtype too."""
        precise = self.precise_full_step
        if precise:
            scaled_grads = gradient(step.weights, self.ascent_noise, precise=True)[1]
            grads = policies.mean_gradient(scaled_grads, part, scaling, self.scope)
            step = step.after_clean_pass(step.y_pred, step.loss, grads,
                                         geometry_lib.global_norm(grads))
            clean = clean._replace(scaled_grads=scaled_grads)
        radius, statistics = self.radius.with_statistics(step)
        radius = ops.cast(radius, "float32")
        perturbed, epsilon_norm = self.perturbation.apply(
            self.geometry, step.grads, step.weights, radius, step.grad_norm,
            row_wise=_backend.dynamic_shapes(self.model),
        )
        statistics = {
            "radius": radius, **statistics,
            **self.perturbation.statistics(epsilon_norm, step.weights),
        }
        scaled_perturbed = gradient(perturbed, at_step_weights=False, precise=precise)[1]
        mean = functools.cache(
            lambda: policies.mean_gradient(scaled_perturbed, part, scaling, self.scope)
        )
        grads = self.descent(step, clean.scaled_grads, scaled_perturbed, mean)
        statistics = {name: ops.cast(value, "float32") for name, value in statistics.items()}
        return FullStep(grads, (step.grads, step.grad_norm), mean, statistics)

    def _gradient(self, step, metrics, objective_scale, weights, noise=None,
                  at_step_weights=True, precise=False):
        """`((scaled objective, Pass), gradient)` of one pass at `weights`
        (in the variables' dtype if `precise`)."""
        return _backend.value_and_grad(
            lambda w: self._objective(w, step, metrics, objective_scale, noise,
                                      at_step_weights, precise)
        )(weights)

    def _objective(self, weights, step, metrics, loss_scale, noise, at_step_weights,
                   precise=False):
        """`(scaled objective, Pass)` at `weights`: the loss-scaled objective
        to differentiate (the loss plus any penalty) and the pass's results."""
        y_pred, non_trainable, losses = self.forward(
            weights, step.non_trainable, step.x, noise, step.rows, precise
        )
        loss, _, metrics = _compat.stateless_compute_loss(
            self.model, losses, weights, non_trainable, metrics,
            step.x, step.y, y_pred, step.sample_weight,
        )
        objective, statistics = loss, {}
        if self.penalty is not None:
            d, penalty = self.penalty(step, weights, y_pred, at_step_weights)
            statistics = {self.method.penalty_divergence_name: d,
                          "penalty": self.penalty.weight * d}
            objective = loss + ops.cast(penalty, loss.dtype)
        scaled = objective * ops.cast(loss_scale, objective.dtype)
        return scaled, Pass(loss, y_pred, non_trainable, metrics, statistics)

    # ------------------------------------------------------- whole batch

    def _whole_batch(self, outcomes, parts):
        """The clean loss, predictions and statistics of the whole batch from
        its parts': the loss weighted by the parts' sizes, the predictions
        concatenated, the statistics averaged over the parts."""
        if len(outcomes) == 1:
            _, clean = outcomes[0]
            return clean.loss, clean.y_pred, clean.statistics
        cleans = [clean for _, clean in outcomes]
        fractions = [ops.cast(part.fraction, "float32") for part in parts]
        loss = sum(ops.cast(f, c.loss.dtype) * c.loss for f, c in zip(fractions, cleans))
        y_pred = keras.tree.map_structure(
            lambda *tensors: ops.concatenate(tensors, axis=0), *[c.y_pred for c in cleans]
        )
        statistics = {
            name: sum(ops.cast(c.statistics[name], "float32") for c in cleans) / len(cleans)
            for name in cleans[0].statistics
        }
        return loss, y_pred, statistics

    def _new_state(self, step, state, descents, full):
        """`state` with the components' updates (references, moving averages),
        the sharpness direction and the input-noise seed moved on."""
        updates = dict(self.frequency.state_updates(descents, step, full))
        for component in self.components:
            for variable, value in component.update(step):
                if step.at.applies is not True:
                    # References follow the optimizer's updates, not its
                    # accumulating micro-batches.
                    value = ops.where(step.at.applies, value, step.value_of(variable))
                updates[id(variable)] = value
        updates.update(self.forward.seed_updates(step))
        return [
            ops.cast(updates[id(v)], v.dtype) if id(v) in updates else value
            for v, value in zip(self.model.non_trainable_variables, state)
        ]
