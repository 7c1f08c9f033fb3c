"""`SharpnessAware`: the one training step every method in this package runs."""

import contextlib
import inspect
import math

import keras
from keras import ops

from keras_tram import _backend
from keras_tram import _batch
from keras_tram import _pipeline
from keras_tram import geometry as geometry_lib
from keras_tram import penalty as penalty_lib
from keras_tram import radius as radius_lib
from keras_tram import trust_region
from keras_tram._validation import check_choice
from keras_tram._validation import check_instance
from keras_tram._validation import check_model
from keras_tram._validation import check_positive_int

try:
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # Keras versions without distribution-aware loss scaling
    unscale_loss_for_distribution = lambda loss: loss  # noqa: E731

_JAX = keras.backend.backend() == "jax"

PERTURBATION_SCOPES = ("global", "per_replica")


class Step:
    """What the pieces of a method may read about the current training step.

    Attributes:
        x, y, sample_weight: the batch.
        weights: current values of the trainable weights (θ).
        non_trainable: values of the non-trainable variables before the step.
        y_pred: the clean predictions at `weights` (set after the clean pass).
        grads: the clean gradient `g` in float32, loss scaling undone.
        grad_norm: its global L2 norm.
        statistics: values to log this step, by name.
        perturbation_sum: adds up values over the replicas that share a
            perturbation (all of them with `perturbation_scope="global"`,
            none with `"per_replica"`).
    """

    def __init__(self, wrapper, x, y, sample_weight, weights, non_trainable):
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.weights = weights
        self.non_trainable = non_trainable
        self.statistics = {}
        self.perturbation_sum = wrapper._perturbation_sum
        self._wrapper = wrapper
        self._index = None

    def forward(self, weights, noise=None):
        """Predictions at `weights` in training mode, with the non-trainable
        state the clean pass started from (so the same dropout masks and
        BatchNorm mode), on noised inputs if `noise` is a `NoisedInputs`."""
        return self._wrapper._forward(weights, self.non_trainable, self.x, noise)[0]

    def head(self, fraction):
        """This step restricted to the first `ceil(fraction · batch)` examples
        (its batch, clean predictions and sample weights)."""
        size = _batch.size(self.x)
        if isinstance(size, int):
            count = max(1, math.ceil(fraction * size))
        else:
            count = ops.maximum(1, ops.cast(ops.ceil(fraction * ops.cast(size, "float32")), "int32"))
        batch = _batch.rows((self.x, self.y, self.sample_weight), 0, count)
        part = Step(self._wrapper, *batch, self.weights, self.non_trainable)
        part.y_pred = _batch.rows(self.y_pred, 0, count)
        part.statistics = self.statistics
        return part

    def value_of(self, variable):
        """The value a non-trainable variable of the wrapper had before the step."""
        if self._index is None:
            variables = self._wrapper.non_trainable_variables
            self._index = {id(v): i for i, v in enumerate(variables)}
        return self.non_trainable[self._index[id(variable)]]


class StepStatistics(keras.metrics.Metric):
    """The means of a step's logged statistics over the steps that were kept,
    and the number of skipped steps, as one metric: one update per step for
    all of them (on torch each metric update costs a tenth of a millisecond).

    `result()` is a dict: each name's mean (0 before any kept step) and
    `skipped_steps`.
    """

    def __init__(self, names, name="step_statistics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = tuple(names)
        self.totals = self.add_variable(
            shape=(len(self.names),), initializer="zeros", name="totals"
        )
        self.kept = self.add_variable(shape=(), initializer="zeros", name="kept")
        self.skipped = self.add_variable(shape=(), initializer="zeros", name="skipped")

    def update_state(self, values, finite, skip_weight=1.0):
        """Adds `values` (one scalar per name) if `finite`, else counts a skip
        (of weight `skip_weight`)."""
        values = ops.stack([ops.cast(v, "float32") for v in values])
        self.totals.assign_add(ops.where(finite, values, 0.0))
        kept = ops.cast(finite, "float32")
        self.kept.assign_add(kept)
        self.skipped.assign_add((1.0 - kept) * skip_weight)

    def result(self):
        means = ops.divide_no_nan(self.totals, self.kept)
        results = {name: means[i] for i, name in enumerate(self.names)}
        results["skipped_steps"] = ops.convert_to_tensor(self.skipped)
        return results

    def get_config(self):
        return {"names": self.names, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_tram")
class SharpnessAware(keras.Model):
    """Wraps a model so that `fit` runs a sharpness-aware step.

    Each step takes the clean gradient `g` at the weights `θ`, perturbs the
    weights to `θ + ε` with `ε = geometry.perturbation(g, θ, r)` and
    `r = radius(step)`, takes the gradient `g'` there, and lets the
    compiled optimizer apply `g'` at `θ`. The weights themselves are never
    perturbed: the second pass runs on perturbed copies. Metrics, the loss in
    the progress bar and the non-trainable state (BatchNorm statistics, seed
    generators) come from the clean pass. A step whose gradients, radius or
    divergence are not finite changes nothing (under a `LossScaleOptimizer`
    the optimizer itself skips it and lowers the loss scale).

    Without a geometry the step is a plain one on the penalized loss (TRPO,
    R3F, MESA). `call`, `predict` and `evaluate` run the wrapped model
    unchanged.

    Args:
        model: the `keras.Model` to train. Its weights are the ones trained.
        geometry: a `keras_tram.geometry.Geometry` (`Euclidean()` for SAM,
            `Adaptive(eta)` for ASAM and TRAM, `Fisher(eta)` for FSAM), or
            None for no perturbation.
        radius: a `keras_tram.radius.Radius` (`Constant(rho)`, or
            `TrustRegion(reference)` for TRAM); None exactly when `geometry`
            is None.
        penalty: an optional `keras_tram.penalty.Penalty` added to the loss
            of every pass.
        ascent_noise: an optional `keras_tram.trust_region.NoisedInputs`: the
            first gradient, the one that shapes `ε`, is then taken on noised
            inputs (TRAM-Fisher); its loss and metrics are the ones logged.
        perturbation_scope: on several devices, `"global"` (default) sums the
            gradient and the divergence over the replicas before perturbing,
            so every replica takes the perturbation of the global batch and
            the weights are those of one device; `"per_replica"` lets each
            replica perturb from its own part of the batch (the original
            SAM's m-sharpness), which saves one all-reduce per step.
        perturbation_chunks: an integer >= 1: split each (per-replica) batch
            into this many consecutive parts, each perturbed from its own
            gradient and radius; the descent gradient is their size-weighted
            mean. Costs no extra gradient work, but smaller batches per pass.
        log_relative_perturbation: whether to log `relative_perturbation`,
            `‖ε‖ / ‖θ‖` over all trainable weights (how far each step really
            moves the weights), at the cost of two more norms per step.

    The named methods (`SAM`, `TRAM`, ...) take `perturbation_scope`,
    `perturbation_chunks` and `log_relative_perturbation` as keywords too;
    the methods without a perturbation (TRPO, R3F, MESA) ignore them.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SharpnessAware(
        model, keras_tram.geometry.Adaptive(eta=0.01), keras_tram.radius.Constant(0.5)
    )
    wrapped.compile(optimizer="sgd", loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    sorted(history.history)  # ['grad_norm', 'loss', 'radius', 'skipped_steps']
    ```
    """

    def __init__(self, model, geometry=None, radius=None, penalty=None,
                 ascent_noise=None, perturbation_scope="global", perturbation_chunks=1,
                 log_relative_perturbation=False, **kwargs):
        super().__init__(**kwargs)
        self.model = check_model(model)
        _backend.seed_dropout(model)
        if geometry is not None:
            check_instance("geometry", geometry, geometry_lib.Geometry)
        if radius is not None:
            check_instance("radius", radius, radius_lib.Radius)
        if (geometry is None) != (radius is None):
            raise ValueError(
                "`geometry` and `radius` go together: pass both for a "
                "sharpness-aware step, or neither for a plain step on the "
                f"penalized loss; received geometry={geometry!r}, radius={radius!r}."
            )
        if penalty is not None:
            check_instance("penalty", penalty, penalty_lib.Penalty)
        if ascent_noise is not None:
            check_instance("ascent_noise", ascent_noise, trust_region.NoisedInputs)
            if geometry is None:
                raise ValueError("`ascent_noise` needs a `geometry` to shape.")
        if geometry is None and penalty is None:
            raise ValueError(
                "Nothing to do: pass a `geometry` and `radius`, a `penalty`, or both."
            )
        self.perturbation_scope = check_choice(
            "perturbation_scope", perturbation_scope, PERTURBATION_SCOPES
        )
        self.perturbation_chunks = check_positive_int(
            "perturbation_chunks", perturbation_chunks
        )
        if not isinstance(log_relative_perturbation, bool):
            raise TypeError(
                "`log_relative_perturbation` must be True or False; received "
                f"{log_relative_perturbation!r}."
            )
        self.log_relative_perturbation = log_relative_perturbation
        self.geometry = geometry
        self.radius = radius
        self.penalty = penalty
        self.ascent_noise = ascent_noise
        self._active_noise = None
        self._noise_rows = None
        self._inputs_are_float = True
        self.uses_noise = ascent_noise is not None or any(
            c.uses_noise for c in self._stateful_components()
        )
        if self.uses_noise:
            self.noise_seed_generator = keras.random.SeedGenerator()
        self._statistic_names = self._choose_statistics()
        self.statistics_tracker = StepStatistics(self._statistic_names)
        self._components_built = False
        if model.built:
            self.build(None)

    def _stateful_components(self):
        return [c for c in (self.radius, self.penalty) if c is not None]

    def _choose_statistics(self):
        names = []
        if self.geometry is not None:
            names.append("radius")
            if self.log_relative_perturbation:
                names.append("relative_perturbation")
        trust_region_radius = isinstance(self.radius, radius_lib.TrustRegion)
        if trust_region_radius:
            names.append("divergence")
        if self.penalty is not None:
            self._penalty_divergence_name = (
                "penalty_divergence" if trust_region_radius else "divergence"
            )
            names += [self._penalty_divergence_name, "penalty"]
        return tuple(names + ["grad_norm"])

    def build(self, input_shape=None):
        if not self.model.built:
            if input_shape is None:
                raise ValueError(
                    "The wrapped model is not built; build it (or give it an "
                    "`Input`) before wrapping, or call the wrapper on data."
                )
            # As Keras builds a layer without `build()`: one symbolic call.
            self.model(
                keras.tree.map_shape_structure(keras.KerasTensor, input_shape)
            )
        if not self._components_built:
            for component in self._stateful_components():
                component.build(self)
            self._components_built = True
        self.built = True

    if keras.backend.backend() == "tensorflow":

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            # Without a distribution strategy Keras's TF trainer leaves the
            # building to the first trace of `train_step`; this step reads the
            # variables before any call, so build them here, as Keras does
            # under a strategy.
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
            if self.built:
                return
            if iterator is not None:
                for _, _, batches in iterator:
                    data_batch = next(batches)
                    break
            if data_batch is not None:
                self._symbolic_build(data_batch=data_batch)

    def make_train_function(self, force=False):
        # `fit` and `train_on_batch` come here once the model is built and
        # before any step: the moment to fill the reference weights.
        for component in self._stateful_components():
            component.fill(self.trainable_variables)
        return super().make_train_function(force=force)

    def call(self, inputs, training=None):
        noise = self._active_noise
        if noise is not None and self._noise_layer(noise) is None:
            inputs = keras.tree.map_structure(
                lambda t: self._add_noise(t, noise.stddev) if _is_float(t) else t, inputs
            )
        return self.model(inputs, training=training)

    # ------------------------------------------- a keras-hub task's preprocessor

    def fit(self, *args, **kwargs):
        preprocess = _pipeline.preprocessing_of(self.model)
        if preprocess is None:
            return super().fit(*args, **kwargs)
        arguments = _arguments(super().fit, args, kwargs)
        split = arguments.pop("validation_split", 0.0)
        if split and arguments.get("validation_data") is None:
            data = tuple(arguments.pop(k, None) for k in ("x", "y", "sample_weight"))
            data, validation = _pipeline.split(data, split)
            arguments.update(zip(("x", "y", "sample_weight"), data))
            arguments["validation_data"] = validation
        batch_size = arguments.pop("batch_size", None)
        x = arguments.pop("x", None)
        shuffle = False
        if not _pipeline.is_dataset(x):
            shuffle = bool(arguments.pop("shuffle", True))
            arguments["shuffle"] = False  # the dataset shuffles instead
        arguments["x"] = _pipeline.dataset(
            preprocess, x, arguments.pop("y", None), arguments.pop("sample_weight", None),
            batch_size, shuffle=shuffle,
        )
        validation = arguments.get("validation_data")
        if validation is not None:
            if not _pipeline.is_dataset(validation):
                validation = keras.utils.unpack_x_y_sample_weight(validation)
                validation = _pipeline.dataset(preprocess, *validation, batch_size)
            else:
                validation = _pipeline.dataset(preprocess, validation)
            arguments["validation_data"] = validation
        return super().fit(**arguments)

    def evaluate(self, *args, **kwargs):
        preprocess = _pipeline.preprocessing_of(self.model)
        if preprocess is None or kwargs.get("_use_cached_eval_dataset"):
            return super().evaluate(*args, **kwargs)
        arguments = _arguments(super().evaluate, args, kwargs)
        arguments["x"] = _pipeline.dataset(
            preprocess, *(arguments.pop(k, None) for k in
                          ("x", "y", "sample_weight", "batch_size")),
        )
        return super().evaluate(**arguments)

    def predict(self, *args, **kwargs):
        preprocess = _pipeline.preprocessing_of(self.model)
        if preprocess is None:
            return super().predict(*args, **kwargs)
        arguments = _arguments(super().predict, args, kwargs)
        arguments["x"] = _pipeline.dataset(
            preprocess, arguments.pop("x", None),
            batch_size=arguments.pop("batch_size", None),
        )
        return super().predict(**arguments)

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._preprocessed(x, y, sample_weight)
        return super().train_on_batch(x, y, sample_weight, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._preprocessed(x, y, sample_weight)
        return super().test_on_batch(x, y, sample_weight, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(self._preprocessed(x)[0])

    def _preprocessed(self, x, y=None, sample_weight=None):
        preprocess = _pipeline.preprocessing_of(self.model)
        if preprocess is None:
            return x, y, sample_weight
        return keras.utils.unpack_x_y_sample_weight(preprocess(x, y, sample_weight))

    # ---------------------------------------------------------------- noise

    def _add_noise(self, tensor, stddev):
        # The noise is drawn for the whole batch (of every replica), and each
        # part of it (chunk, replica) takes its own rows: splitting a batch
        # changes no example's noise.
        size = ops.shape(tensor)[0]
        start, total = self._noise_rows or (0, size)
        if _backend.splits_batch_across_replicas():
            start = start + _backend.replica_index() * total
            total = total * _backend.replica_count()
        z = _backend.normal(
            (total, *ops.shape(tensor)[1:]), stddev, tensor.dtype, self.noise_seed_generator
        )
        if total is not size:
            z = z[start:start + size]
        return ops.add(tensor, z)  # `tensor` may still be a NumPy array (torch, eager)

    def _noise_layer(self, noise):
        """The layer whose output `noise` goes on, or None for float inputs."""
        if isinstance(noise.noise_layer, keras.layers.Layer):
            return noise.noise_layer
        layers = list(self.model._flatten_layers())
        if isinstance(noise.noise_layer, str):
            for layer in layers:
                if layer.name == noise.noise_layer:
                    return layer
            raise ValueError(
                f"`noise_layer`={noise.noise_layer!r} is not a layer of the model; "
                f"its layers are {[layer.name for layer in layers]}."
            )
        if self._inputs_are_float:
            return None
        for layer in layers:
            embedding = getattr(layer, "token_embedding", None)
            if isinstance(embedding, keras.layers.Layer):
                return embedding
        for layer in layers:
            if isinstance(layer, keras.layers.Embedding):
                return layer
        raise ValueError(
            "Input noise needs float inputs, or an embedding layer to add it to: "
            "the model takes no float input and has no `token_embedding` or "
            "`keras.layers.Embedding`. Name the layer with `noise_layer=`."
        )

    @contextlib.contextmanager
    def _noised(self, noise):
        """Within this context, training-mode calls see noised inputs."""
        if noise is None:
            yield
            return
        layer = self._noise_layer(noise)
        object.__setattr__(self, "_active_noise", noise)
        if layer is not None:
            original = layer.call

            def noisy_call(*args, **kwargs):
                outputs = original(*args, **kwargs)
                if kwargs.get("reverse"):  # a tied embedding projecting to logits
                    return outputs
                return self._add_noise(outputs, noise.stddev)

            object.__setattr__(layer, "call", noisy_call)
        try:
            yield
        finally:
            object.__setattr__(self, "_active_noise", None)
            if layer is not None:
                object.__delattr__(layer, "call")

    # ----------------------------------------------------------------- step

    def _forward(self, weights, non_trainable, inputs, noise=None):
        with self._noised(noise):
            return self.stateless_call(
                weights, non_trainable, inputs, training=True, return_losses=True
            )

    def _loss(self, weights, step, metrics, loss_scale, noise=None, at_step_weights=True):
        """Stateless loss at `weights`.

        Returns `(scaled_objective, (loss, y_pred, non_trainable, metrics,
        statistics))`: the loss-scaled objective to differentiate (the loss
        plus any penalty), the loss `compute_loss` gives (regularization
        included, penalty not), and the clean pass's updates.
        """
        y_pred, non_trainable, losses = self._forward(
            weights, step.non_trainable, step.x, noise
        )
        mapping = list(zip(self.trainable_variables, weights))
        mapping += zip(self.non_trainable_variables, non_trainable)
        mapping += zip(self.metrics_variables, metrics)
        self._losses_override = losses
        try:
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss = self._compute_loss(
                    x=step.x,
                    y=step.y,
                    y_pred=y_pred,
                    sample_weight=step.sample_weight,
                    training=True,
                )
        finally:
            self._losses_override = []
        metrics = [scope.get_current_value(v) for v in self.metrics_variables]
        objective, statistics = loss, {}
        if self.penalty is not None:
            d, penalty = self.penalty(step, weights, y_pred, at_step_weights)
            statistics = {
                self._penalty_divergence_name: d, "penalty": self.penalty.weight * d,
            }
            objective = loss + ops.cast(penalty, loss.dtype)
        scaled = objective * ops.cast(loss_scale, objective.dtype)
        return scaled, (loss, y_pred, non_trainable, metrics, statistics)

    def _loss_scale(self, optimizer_variables=None):
        """The factor `optimizer.scale_loss` multiplies the loss by (float32)."""
        one = ops.ones((), dtype="float32")
        if self.optimizer is None:
            return one
        if optimizer_variables is None:
            return ops.cast(self.optimizer.scale_loss(one), "float32")
        mapping = list(zip(self.optimizer.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping):
            return ops.cast(self.optimizer.scale_loss(one), "float32")

    def _applies_update(self, optimizer_variables=None):
        """Whether the optimizer changes the weights this step: False on the
        accumulating steps of `gradient_accumulation_steps`."""
        steps = getattr(self.optimizer, "gradient_accumulation_steps", None)
        if not steps or steps <= 1:
            return True

        def read():
            # `iterations` counts updates when accumulating; Keras decides
            # with its micro-step counter, as here.
            micro_steps = getattr(self.optimizer, "_iterations", None)
            if micro_steps is None:
                micro_steps = self.optimizer.iterations
            return ops.equal(ops.mod(micro_steps + 1, steps), 0)

        if optimizer_variables is None:
            return read()
        mapping = list(zip(self.optimizer.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping):
            return read()

    def _sharpness_aware_step(
        self, weights, non_trainable, metrics, x, y, sample_weight, loss_scale,
        applies_update=True,
    ):
        """The method, written once and stateless.

        Returns `(descent_grads, finite, step)`: the gradient to apply at
        `weights` (still loss-scaled, as the optimizer expects), whether every
        gradient, radius and divergence is finite (on every replica), and the
        `Step`, which carries the clean pass's loss, predictions, statistics,
        and the new non-trainable (`step.new_non_trainable`) and metric
        (`step.new_metrics`) values.
        """
        object.__setattr__(self, "_inputs_are_float", _has_float(x))
        chunks = self._chunk_count()
        if chunks == 1:
            parts = [(x, y, sample_weight, None, None)]
        else:
            parts = _split_batch(x, y, sample_weight, chunks)
        steps, descent_grads = [], None
        state = non_trainable
        for part_x, part_y, part_weight, fraction, rows in parts:
            step = Step(self, part_x, part_y, part_weight, weights, state)
            object.__setattr__(self, "_noise_rows", rows)
            try:
                grads = self._part_step(step, metrics, loss_scale, fraction)
            finally:
                object.__setattr__(self, "_noise_rows", None)
            descent_grads = grads if descent_grads is None else [
                a + b for a, b in zip(descent_grads, grads)
            ]
            # The next part starts where this one left the model's state
            # (BatchNorm statistics, dropout seeds), with the same noise seed.
            state, metrics = self._keep_noise_seed(step.new_non_trainable, state), step.new_metrics
            steps.append(step)
        step = steps[0] if chunks == 1 else self._whole_batch(steps, parts, x, y, sample_weight)
        step.non_trainable = non_trainable
        step.applies_update = applies_update
        step.new_non_trainable = self._with_state_updates(step, state)

        # One norm per gradient is a cheaper finiteness check than one per
        # element; a norm that overflows float32 also counts as non-finite.
        checks = [geometry_lib.global_norm(descent_grads)] + [
            ops.cast(v, "float32") for v in step.statistics.values()
        ]
        finite = ops.all(ops.isfinite(ops.stack(checks)))
        # Replicas skip or apply a step together.
        (non_finite,) = _backend.replica_sum([1.0 - ops.cast(finite, "float32")])
        finite = ops.equal(non_finite, 0.0)
        return descent_grads, finite, step

    def _part_step(self, step, metrics, loss_scale, fraction):
        """The method on one part of the batch (all of it unless it is split
        into chunks); returns that part's share of the descent gradient."""
        objective_scale = loss_scale if fraction is None else loss_scale * fraction

        def grad_fn(w, noise=None, at_step_weights=True):
            return _backend.value_and_grad(
                lambda w: self._loss(w, step, metrics, objective_scale, noise, at_step_weights)
            )(w)

        (_, aux), scaled_grads = grad_fn(step.weights, self.ascent_noise)
        step.loss, y_pred, step.new_non_trainable, step.new_metrics, penalty_stats = aux
        step.statistics.update(penalty_stats)
        step.y_pred = keras.tree.map_structure(ops.stop_gradient, y_pred)
        step.grads = grads = self._mean_gradient(scaled_grads, loss_scale, fraction)
        step.grad_norm = step.statistics["grad_norm"] = geometry_lib.global_norm(grads)
        if self.geometry is None:
            return scaled_grads
        radius = ops.cast(self.radius(step), "float32")
        step.statistics["radius"] = radius
        epsilon = self.geometry.perturbation(grads, step.weights, radius, step.grad_norm)
        if self.log_relative_perturbation:
            step.statistics["relative_perturbation"] = geometry_lib.global_norm(
                epsilon
            ) * geometry_lib.safe_reciprocal(geometry_lib.global_norm(step.weights))
        perturbed = [w + geometry_lib.as_dtype(e, w.dtype) for w, e in zip(step.weights, epsilon)]
        return grad_fn(perturbed, at_step_weights=False)[1]

    def _mean_gradient(self, scaled_grads, loss_scale, fraction):
        """`g`, the gradient of the mean loss over the batch the perturbation
        is for, in float32: loss scaling and the part's weight undone, and
        summed over the replicas that share the perturbation."""
        grads = geometry_lib.as_float32(scaled_grads)
        unscale = loss_scale if self._optimizer_scales_loss else None
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

    def _perturbation_sum(self, values):
        if self.perturbation_scope == "global":
            return _backend.replica_sum(values)
        return list(values)

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
        if not self.uses_noise:
            return values
        seed = self.noise_seed_generator.state
        return [
            old if variable is seed else value
            for variable, value, old in zip(self.non_trainable_variables, values, old_values)
        ]

    def _with_state_updates(self, step, state):
        """`state` with the components' updates (references, moving averages)
        and the input-noise seed moved on."""
        updates = {}
        for component in self._stateful_components():
            for variable, value in component.update(step):
                if step.applies_update is not True:
                    # References follow the optimizer's updates, not its
                    # accumulating micro-batches.
                    value = ops.where(step.applies_update, value, step.value_of(variable))
                updates[id(variable)] = value
        if self.uses_noise:
            seed = self.noise_seed_generator.state
            with keras.StatelessScope(state_mapping=[(seed, step.value_of(seed))]) as scope:
                self.noise_seed_generator.next()
            updates[id(seed)] = scope.get_current_value(seed)
        return [
            ops.cast(updates[id(v)], v.dtype) if id(v) in updates else value
            for v, value in zip(self.non_trainable_variables, state)
        ]

    def _update_metrics(self, step, finite):
        """Updates the metrics from the clean pass and returns the logs.

        A skipped (non-finite) step is counted in `skipped_steps` and left out
        of the step statistics' means, which therefore stay finite.
        """
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(step.loss), sample_weight=_batch.size(step.x)
        )
        # Every replica skips a step together; count it once.
        replicas = _backend.replica_count() if _backend.splits_batch_across_replicas() else 1
        self.statistics_tracker.update_state(
            [step.statistics[name] for name in self._statistic_names], finite,
            skip_weight=1.0 / replicas,
        )
        return self.compute_metrics(step.x, step.y, step.y_pred, step.sample_weight)

    @property
    def _optimizer_scales_loss(self):
        return self._optimizer_skips_non_finite or (
            getattr(self.optimizer, "loss_scale_factor", None) is not None
        )

    @property
    def _optimizer_skips_non_finite(self):
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    # --------------------------------------------- Keras's train_step contract

    if _JAX:

        def train_step(self, state, data):
            weights, non_trainable, optimizer_values, metrics = state
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            grads, finite, step = self._sharpness_aware_step(
                weights,
                non_trainable,
                metrics,
                x,
                y,
                sample_weight,
                self._loss_scale(optimizer_values),
                self._applies_update(optimizer_values),
            )
            mapping = list(zip(self.metrics_variables, step.new_metrics))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                logs = self._update_metrics(step, finite)
            metrics = [scope.get_current_value(v) for v in self.metrics_variables]

            new_weights, new_optimizer_values = self.optimizer.stateless_apply(
                optimizer_values, grads, weights
            )
            if not self._optimizer_skips_non_finite:
                # A select, not a cond: with a cond the benchmark's conv net
                # took 110 instead of 89 ms per SAM step.
                new_weights = _select(finite, new_weights, weights)
                new_optimizer_values = _select(
                    finite, new_optimizer_values, optimizer_values
                )
            new_non_trainable = _select(finite, step.new_non_trainable, non_trainable)
            state = (new_weights, new_non_trainable, new_optimizer_values, metrics)
            return logs, state

        def test_step(self, state, data):
            logs, state = super().test_step(state, data)
            return self._without_step_statistics(logs), state

    else:

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            non_trainable = _backend.values_of(self.non_trainable_variables)
            metrics = _backend.values_of(self.metrics_variables)
            grads, finite, step = self._sharpness_aware_step(
                _backend.values_of(self.trainable_variables),
                non_trainable,
                metrics,
                x,
                y,
                sample_weight,
                self._loss_scale(),
                self._applies_update(),
            )
            with _backend.no_grad():
                # State first: on torch the step's values are views of the
                # weights, which the optimizer is about to change in place.
                _assign_changed(self.metrics_variables, step.new_metrics, metrics)
                changed = [
                    (variable, new)
                    for variable, new, old in zip(
                        self.non_trainable_variables, step.new_non_trainable, non_trainable
                    )
                    if new is not old
                ]
                skips_non_finite = self._optimizer_skips_non_finite

                def update(grads, *values):
                    for (variable, _), value in zip(changed, values):
                        variable.assign(value)
                    if not skips_non_finite:
                        self.optimizer.apply(grads, self.trainable_variables)

                values = [value for _, value in changed]
                if _backend.merge_call_needed():
                    _backend.apply_across_replicas(finite, update, grads, *values)
                else:
                    ops.cond(finite, lambda: update(grads, *values), lambda: None)
                if skips_non_finite:
                    self.optimizer.apply(grads, self.trainable_variables)
                return self._update_metrics(step, finite)

        def test_step(self, data):
            return self._without_step_statistics(super().test_step(data))

    def _without_step_statistics(self, logs):
        names = (*self._statistic_names, "skipped_steps")
        return {k: v for k, v in logs.items() if k not in names}

    # ------------------------------------------------------------- saving

    def _saved_variables(self):
        """The wrapper's own variables, then the wrapped model's seed states.

        Keras does not save seed-generator states; saving them here makes a
        resumed run draw the same dropout masks as an uninterrupted one.
        """
        seeds = [
            generator.state
            for layer in self._flatten_layers()
            for generator in getattr(layer, "_seed_generators", [])
        ]
        return self._trainable_variables + self._non_trainable_variables + seeds

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expected {len(variables)} "
                f"saved variables of its own (states and seeds), but the file "
                f"holds {len(store.keys())}. Was it saved from a different model?"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    def _base_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "perturbation_scope": self.perturbation_scope,
            "perturbation_chunks": self.perturbation_chunks,
            "log_relative_perturbation": self.log_relative_perturbation,
        }

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **self._base_config(),
            "geometry": serialize(self.geometry),
            "radius": serialize(self.radius),
            "penalty": serialize(self.penalty),
            "ascent_noise": serialize(self.ascent_noise),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "geometry", "radius", "penalty", "ascent_noise"):
            if key in config:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(**config)


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


def _select(condition, new_values, old_values):
    return [ops.where(condition, new, old) for new, old in zip(new_values, old_values)]


def _assign_changed(variables, values, old_values):
    """Assigns the values that are not the very tensors read before the step."""
    for variable, value, old in zip(variables, values, old_values):
        if value is not old:
            variable.assign(value)


def _arguments(method, args, kwargs):
    """The arguments of a call to a Keras method, by name."""
    signature = inspect.signature(method)
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


def _is_float(tensor):
    return tensor is not None and "float" in keras.backend.standardize_dtype(tensor.dtype)


def _has_float(inputs):
    return any(_is_float(t) for t in keras.tree.flatten(inputs))
