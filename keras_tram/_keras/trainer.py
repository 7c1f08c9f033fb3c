"""Keras's `train_step` / `test_step` contract around the step, per backend.

As Keras picks one trainer per backend at import (`keras/src/models/model.py`),
`Trainer` is the class for the current backend: stateless on JAX (values in,
values out), variables assigned in place on TensorFlow and PyTorch. Each
takes the gradient from `_step.algorithm.Algorithm.run`, applies it with the compiled
optimizer when it is finite, and updates the metrics from the clean pass.

With `perturbation_every = k`, whether an update is a full step is known
before it runs (its index modulo k), and the trainers decide it there: JAX
compiles one step function per kind of step and picks one before each
step; torch, which runs the step eagerly, passes the decision in. Where
one compiled execution holds several updates (`steps_per_execution` on JAX
and TensorFlow, and TensorFlow's graph in general), and under gradient
accumulation, the step decides itself, with a `cond`.
"""

import functools

import keras
from keras import ops

from keras_tram._keras import compat as _compat
from keras_tram._ops import backend as _backend
from keras_tram._step import algorithm as _step
from keras_tram._step import batch as _batch
from keras_tram.pieces import schedule


class _Common:
    """What every backend's trainer shares: the optimizer's loss scale and
    accumulation, filling references when training starts, the logs."""

    def make_train_function(self, force=False):
        # `fit` and `train_on_batch` come here once the model is built and
        # before any step: the moment to fill the reference weights.
        self._fill_references()
        return super().make_train_function(force=force)

    def _fill_references(self):
        for component in self._method.components:
            component.fill(self.trainable_variables)

    def _run(self, weights, non_trainable, metrics, data, optimizer_values=None, full=None):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return self._algorithm.run(
            _step.Values(weights, non_trainable, metrics), (x, y, sample_weight),
            _step.Scaling(
                self._optimizer_value(_loss_scale, optimizer_values),
                self._optimizer_scales_loss(),
            ),
            self._optimizer_value(
                functools.partial(_at, learning_rate=self._method.reads_learning_rate),
                optimizer_values,
            ),
            full,
        ), (x, y, sample_weight)

    def _update_index(self):
        """The optimizer's variable that counts updates (a LossScaleOptimizer's
        inner one's) if whether a step is a full step can be decided before
        it runs, else None (then the step decides: no alternation, or
        gradient accumulation, whose update index is a quotient)."""
        if not self._algorithm.frequency.alternates or self.optimizer is None:
            return None
        inner = _compat.inner_optimizer(self.optimizer)
        if (getattr(inner, "gradient_accumulation_steps", None) or 1) > 1:
            return None
        return inner.iterations

    def _optimizer_value(self, read, optimizer_values):
        """`read(optimizer)`, with the optimizer's variables at
        `optimizer_values` if given (JAX's stateless step)."""
        if self.optimizer is None or optimizer_values is None:
            return read(self.optimizer)
        mapping = list(zip(self.optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            return read(self.optimizer)

    def _optimizer_scales_loss(self):
        return self._optimizer_skips_non_finite() or (
            getattr(self.optimizer, "loss_scale_factor", None) is not None
        )

    def _optimizer_skips_non_finite(self):
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def _update_metrics(self, result, batch):
        """Updates the metrics from the clean pass and returns the logs.

        A skipped (non-finite) step is counted in `skipped_steps` and left out
        of the step statistics' means, which therefore stay finite.
        """
        x, y, sample_weight = batch
        _compat.loss_tracker(self).update_state(
            _compat.unscale_loss_for_distribution(result.loss),
            sample_weight=_batch.size(x),
        )
        # Every replica skips a step together; count it once.
        replicas = _backend.replica_count() if _backend.splits_batch_across_replicas() else 1
        self.statistics_tracker.update_state(
            [result.statistics[name] for name in self._method.statistic_names], result.finite,
            skip_weight=1.0 / replicas, full=result.full,
        )
        return self.compute_metrics(x, y, result.y_pred, sample_weight)

    def _without_step_statistics(self, logs):
        names = (*self._method.statistic_names, "skipped_steps", "full_steps")
        return {k: v for k, v in logs.items() if k not in names}


class _StatelessTrainer(_Common):
    """JAX: `train_step(state, data) -> (logs, state)`.

    With `perturbation_every`, and one update per execution, the train
    function is two: Keras's, made around the full step and around the step
    in between, picked before each step from the update index in the state
    (`_PickedBeforeEachStep`). Each is traced once, and neither carries the
    other's passes or a `cond`."""

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return super().make_train_function(force=force)
        index = self._update_index()
        positions = [id(v) for v in self.optimizer.variables] if index is not None else []
        if id(index) not in positions or self.steps_per_execution != 1:
            return super().make_train_function(force=force)
        self._fill_references()
        make = super(_Common, self).make_train_function  # Keras's own
        full, in_between = (
            _compat.train_function_around(self, make, functools.partial(self.train_step, full=kind))
            for kind in (True, False)
        )
        self.train_function = _PickedBeforeEachStep(
            self._algorithm.frequency.is_full_at, positions.index(id(index)), full, in_between
        )

    def train_step(self, state, data, full=None):
        weights, non_trainable, optimizer_values, metrics = state
        result, batch = self._run(weights, non_trainable, metrics, data, optimizer_values, full)
        grads, finite = result.grads, result.finite
        mapping = list(zip(self.metrics_variables, result.metrics))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._update_metrics(result, batch)
        metrics = [scope.get_current_value(v) for v in self.metrics_variables]

        def apply():
            new_weights, new_optimizer_values = self.optimizer.stateless_apply(
                optimizer_values, grads, weights
            )
            return list(new_weights), list(new_optimizer_values), list(result.non_trainable)

        if self._optimizer_skips_non_finite():
            new_weights, new_optimizer_values, _ = apply()
            new_non_trainable = _select(finite, result.non_trainable, non_trainable)
        else:
            # A cond: a select over every weight, optimizer variable and
            # reference copy cost 0.16 s of a 0.55 s SAM step on XLM-R
            # (1 × 8). Under XLA on a CPU a model with convolutions keeps the
            # select: with a cond the benchmark's conv net took 110 instead
            # of 89 ms per step.
            new_weights, new_optimizer_values, new_non_trainable = _backend.branch(
                finite, apply,
                lambda: (list(weights), list(optimizer_values), list(non_trainable)),
                select=_backend.slow_convolutions_in_branches(self),
            )
        return logs, (new_weights, new_non_trainable, new_optimizer_values, metrics)

    def test_step(self, state, data):
        logs, state = super().test_step(state, data)
        return self._without_step_statistics(logs), state


class _PickedBeforeEachStep:
    """A JAX train function `(state, data) -> (logs, state)` that runs
    `full` or `in_between` as `is_full_at(update index)` says, the index read
    from the optimizer's variables in the state (at `position`)."""

    def __init__(self, is_full_at, position, full, in_between):
        self.is_full_at = is_full_at
        self.position = position
        self.full, self.in_between = full, in_between

    def __call__(self, state, data):
        index = _backend.host_int(state[2][self.position])
        return (self.full if self.is_full_at(index) else self.in_between)(state, data)


class _StatefulTrainer(_Common):
    """TensorFlow and PyTorch: `train_step(data) -> logs`, variables assigned."""

    def train_step(self, data):
        non_trainable = _backend.values_of(self.non_trainable_variables)
        metrics = _backend.values_of(self.metrics_variables)
        weights = _backend.values_of(self.trainable_variables)
        full = None
        index = self._update_index()
        if index is not None and _backend.runs_eagerly(self):
            # Known before the step: no `cond`, and a Python branch.
            full = self._algorithm.frequency.is_full_at(_backend.host_int(index.value))
        result, batch = self._run(weights, non_trainable, metrics, data, full=full)
        grads, finite = result.grads, result.finite
        with _backend.no_grad():
            # State first: on torch the step's values are views of the
            # weights, which the optimizer is about to change in place.
            _assign_changed(self.metrics_variables, result.metrics, metrics)
            changed = [
                (variable, new)
                for variable, new, old in zip(
                    self.non_trainable_variables, result.non_trainable, non_trainable
                )
                if new is not old
            ]
            skips_non_finite = self._optimizer_skips_non_finite()

            def update(grads, *values):
                _backend.assign([variable for variable, _ in changed], values)
                if not skips_non_finite:
                    self.optimizer.apply(grads, self.trainable_variables)

            values = [value for _, value in changed]
            if _backend.merge_call_needed():
                _backend.apply_across_replicas(finite, update, grads, *values)
            else:
                ops.cond(finite, lambda: update(grads, *values), lambda: None)
            if skips_non_finite:
                self.optimizer.apply(grads, self.trainable_variables)
            return self._update_metrics(result, batch)

    def test_step(self, data):
        return self._without_step_statistics(super().test_step(data))


class _TensorFlowTrainer(_compat.BuildsBeforeTracing, _StatefulTrainer):
    """TensorFlow: the stateful trainer, with the variables built before the
    first trace."""


Trainer = {
    "jax": _StatelessTrainer,
    "tensorflow": _TensorFlowTrainer,
}.get(keras.backend.backend(), _StatefulTrainer)

def _loss_scale(optimizer):
    """The factor `optimizer.scale_loss` multiplies the loss by (float32)."""
    one = ops.ones((), dtype="float32")
    if optimizer is None:
        return one
    return ops.cast(optimizer.scale_loss(one), "float32")


def _at(optimizer, learning_rate=False):
    """Where this step stands in training (`keras_tram.schedule.At`): the
    update's index, whether the optimizer applies it (not on the
    accumulating steps of `gradient_accumulation_steps`) and the micro-step's
    place in it, and, if `learning_rate`, the optimizer's learning rate now
    and at update 0."""
    if optimizer is None:
        return schedule.At()
    inner = _compat.inner_optimizer(optimizer)
    index = ops.convert_to_tensor(inner.iterations)
    rates = {}
    if learning_rate:
        rates = dict(
            learning_rate=ops.cast(optimizer.learning_rate, "float32"),
            initial_learning_rate=ops.cast(_compat.initial_learning_rate(optimizer), "float32"),
        )
    steps = getattr(inner, "gradient_accumulation_steps", None)
    if not steps or steps <= 1:
        return schedule.At(index, **rates)
    # `iterations` counts updates when accumulating; Keras decides with its
    # micro-step counter, as here.
    micro_step = ops.mod(ops.convert_to_tensor(_compat.micro_steps(optimizer)), steps)
    return schedule.At(index, **rates, applies=ops.equal(micro_step + 1, steps),
                       micro_step=micro_step, micro_steps=steps)


def _select(condition, new_values, old_values):
    return [ops.where(condition, new, old) for new, old in zip(new_values, old_values)]


def _assign_changed(variables, values, old_values):
    """Assigns the values that are not the very tensors read before the step."""
    changed = [i for i, (value, old) in enumerate(zip(values, old_values)) if value is not old]
    _backend.assign([variables[i] for i in changed], [values[i] for i in changed])
