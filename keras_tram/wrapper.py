"""`SharpnessAware`: the one training step every method in this package runs."""

import keras
from keras import ops

from keras_tram import _backend
from keras_tram import geometry as geometry_lib
from keras_tram import radius as radius_lib
from keras_tram._validation import check_instance
from keras_tram._validation import check_model

try:
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # Keras versions without distribution-aware loss scaling
    unscale_loss_for_distribution = lambda loss: loss  # noqa: E731

_JAX = keras.backend.backend() == "jax"
_STEP_STATISTICS = ("radius", "grad_norm")


class Step:
    """What a radius source may read about the current training step.

    Attributes:
        x, y, sample_weight: the batch.
        y_pred: the clean predictions at `weights` (training mode).
        weights: current values of the trainable weights (θ).
        non_trainable: values of the non-trainable variables before the step.
        grads: the clean gradient `g` in float32, loss scaling undone.
        grad_norm: its global L2 norm.
        forward: `forward(weights, inputs) -> y_pred`, a training-mode forward
            pass with the same non-trainable state (so the same dropout masks
            and BatchNorm mode) as the clean pass, without gradient.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


@keras.saving.register_keras_serializable(package="keras_tram")
class SharpnessAware(keras.Model):
    """Wraps a model so that `fit` runs a sharpness-aware step.

    Each step takes the clean gradient `g` at the weights `θ`, perturbs the
    weights to `θ + ε` with `ε = geometry.perturbation(g, θ, r)` and
    `r = radius(step)`, takes the gradient `g'` there, and lets the
    compiled optimizer apply `g'` at `θ`. The weights themselves are never
    perturbed: the second pass runs on perturbed copies. Metrics, the loss in
    the progress bar and the non-trainable state (BatchNorm statistics, seed
    generators) come from the clean pass. A step whose gradients are not
    finite changes nothing (under a `LossScaleOptimizer` the optimizer itself
    skips it and lowers the loss scale).

    `call`, `predict` and `evaluate` run the wrapped model unchanged.

    Args:
        model: the `keras.Model` to train. Its weights are the ones trained.
        geometry: a `keras_tram.geometry.Geometry`, e.g. `Euclidean()` (SAM)
            or `Adaptive(eta)` (ASAM).
        radius: a `keras_tram.radius.Radius`, e.g. `Constant(rho)`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SharpnessAware(
        model, keras_tram.geometry.Adaptive(eta=0.01), keras_tram.radius.Constant(0.5)
    )
    wrapped.compile(optimizer="sgd", loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    sorted(history.history)  # ['grad_norm', 'loss', 'radius']
    ```
    """

    def __init__(self, model, geometry, radius, **kwargs):
        super().__init__(**kwargs)
        self.model = check_model(model)
        self.geometry = check_instance("geometry", geometry, geometry_lib.Geometry)
        self.radius = check_instance("radius", radius, radius_lib.Radius)
        self.radius_tracker = keras.metrics.Mean(name="radius")
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        if model.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    # ----------------------------------------------------------------- step

    def _forward(self, weights, non_trainable, inputs):
        y_pred, non_trainable, losses = self.stateless_call(
            weights, non_trainable, inputs, training=True, return_losses=True
        )
        return y_pred, non_trainable, losses

    def _loss(self, weights, non_trainable, metrics, x, y, sample_weight, loss_scale):
        """Stateless loss at `weights`: `(scaled_loss, (loss, y_pred, non_trainable, metrics))`."""
        y_pred, non_trainable, losses = self._forward(weights, non_trainable, x)
        mapping = list(zip(self.trainable_variables, weights))
        mapping += zip(self.non_trainable_variables, non_trainable)
        mapping += zip(self.metrics_variables, metrics)
        self._losses_override = losses
        try:
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss = self._compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
        finally:
            self._losses_override = []
        metrics = [scope.get_current_value(v) for v in self.metrics_variables]
        scaled = loss * ops.cast(loss_scale, loss.dtype)
        return scaled, (loss, y_pred, non_trainable, metrics)

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

    def _sharpness_aware_step(
        self, weights, non_trainable, metrics, x, y, sample_weight, loss_scale
    ):
        """The method, written once and stateless.

        Returns `(descent_grads, finite, clean)`: the gradient to apply at
        `weights` (still loss-scaled, as the optimizer expects), whether every
        gradient and the radius are finite, and a `Step` describing the clean
        pass (its loss, predictions, new non-trainable and metric values, and
        the step statistics `radius` and `grad_norm`).
        """
        grad_fn = _backend.value_and_grad(
            lambda w: self._loss(
                w, non_trainable, metrics, x, y, sample_weight, loss_scale
            )
        )
        (_, (loss, y_pred, new_non_trainable, new_metrics)), scaled_grads = grad_fn(
            weights
        )
        grads = geometry_lib.as_float32(scaled_grads)
        if self._optimizer_scales_loss:
            grads = [g / loss_scale for g in grads]
        grad_norm = geometry_lib.global_norm(grads)

        def forward(w, inputs):
            y_pred = self._forward(w, non_trainable, inputs)[0]
            return keras.tree.map_structure(ops.stop_gradient, y_pred)

        step = Step(
            x=x,
            y=y,
            sample_weight=sample_weight,
            y_pred=keras.tree.map_structure(ops.stop_gradient, y_pred),
            weights=weights,
            non_trainable=non_trainable,
            grads=grads,
            grad_norm=grad_norm,
            forward=forward,
        )
        radius = ops.cast(self.radius(step), "float32")
        epsilon = self.geometry.perturbation(grads, weights, radius, grad_norm)
        perturbed = [w + ops.cast(e, w.dtype) for w, e in zip(weights, epsilon)]
        _, descent_grads = grad_fn(perturbed)

        # One norm per gradient is a cheaper finiteness check than one per
        # element; a norm that overflows float32 also counts as non-finite.
        finite = ops.all(
            ops.isfinite(
                ops.stack([grad_norm, geometry_lib.global_norm(descent_grads), radius])
            )
        )
        step.loss = loss
        step.new_non_trainable = new_non_trainable
        step.new_metrics = new_metrics
        step.statistics = {"radius": radius, "grad_norm": grad_norm}
        return descent_grads, finite, step

    def _update_metrics(self, step):
        """Updates the metrics from the clean pass and returns the logs."""
        first_input = next(i for i in keras.tree.flatten(step.x) if i is not None)
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(step.loss),
            sample_weight=ops.shape(first_input)[0],
        )
        self.radius_tracker.update_state(step.statistics["radius"])
        self.grad_norm_tracker.update_state(step.statistics["grad_norm"])
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
            )
            mapping = list(zip(self.metrics_variables, step.new_metrics))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                logs = self._update_metrics(step)
            metrics = [scope.get_current_value(v) for v in self.metrics_variables]

            new_weights, new_optimizer_values = self.optimizer.stateless_apply(
                optimizer_values, grads, weights
            )
            if not self._optimizer_skips_non_finite:
                new_weights = _select(finite, new_weights, weights)
                new_optimizer_values = _select(
                    finite, new_optimizer_values, optimizer_values
                )
            new_non_trainable = _select(finite, step.new_non_trainable, non_trainable)
            state = (new_weights, new_non_trainable, new_optimizer_values, metrics)
            return logs, state

        def test_step(self, state, data):
            logs, state = super().test_step(state, data)
            return _without_step_statistics(logs), state

    else:

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            non_trainable = _backend.values_of(self.non_trainable_variables)
            grads, finite, step = self._sharpness_aware_step(
                _backend.values_of(self.trainable_variables),
                non_trainable,
                _backend.values_of(self.metrics_variables),
                x,
                y,
                sample_weight,
                self._loss_scale(),
            )
            with _backend.no_grad():
                apply = lambda: self.optimizer.apply(grads, self.trainable_variables)
                if self._optimizer_skips_non_finite:
                    apply()
                else:
                    ops.cond(finite, apply, lambda: None)
                new_non_trainable = _select(finite, step.new_non_trainable, non_trainable)
                _assign(self.non_trainable_variables, new_non_trainable)
                _assign(self.metrics_variables, step.new_metrics)
                return self._update_metrics(step)

        def test_step(self, data):
            return _without_step_statistics(super().test_step(data))

    # ------------------------------------------------------------- saving

    def _saved_variables(self):
        """The wrapper's own variables, then the wrapped model's seed states.

        Keras does not save seed-generator states; saving them here makes a
        resumed run draw the same dropout masks as an uninterrupted one.
        """
        seeds = [
            generator.state
            for layer in self.model._flatten_layers()
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
        }

    def get_config(self):
        return {
            **self._base_config(),
            "geometry": keras.saving.serialize_keras_object(self.geometry),
            "radius": keras.saving.serialize_keras_object(self.radius),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "geometry", "radius"):
            if key in config:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(**config)


def _select(condition, new_values, old_values):
    return [ops.where(condition, new, old) for new, old in zip(new_values, old_values)]


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def _without_step_statistics(logs):
    return {k: v for k, v in logs.items() if k not in _STEP_STATISTICS}
