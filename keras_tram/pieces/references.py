"""References: the predictions a trust-region distance compares the current
ones with — the model's own under other weights (the previous step, the start
of training, a moving average) or on noised inputs.

    >>> from keras_tram import references
    >>> references.MovingAverageWeights(decay=0.99)
    MovingAverageWeights(decay=0.99)
"""

import keras
from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram.pieces._component import Component
from keras_tram.pieces._validation import check_non_negative
from keras_tram.pieces._validation import check_unit_interval


class Reference(Component):
    """Base class of references.

    Subclasses implement `predictions(step, weights)`, the reference
    predictions when the current weights are `weights`, and may keep state
    through the `Component` methods.
    """

    def predictions(self, step, weights):
        raise NotImplementedError

    def is_current(self, step):
        """A boolean tensor, true when the reference is the model at the
        step's weights itself (so `d` there is exactly 0, whatever the
        rounding of two separately compiled forward passes), or None if it
        never is."""
        return None


class _WeightReference(Reference):
    """A reference that is the model itself under a stored copy of its weights.

    The copy is one non-trainable variable per trainable weight, plus a flag
    saying it holds weights. The wrapper fills it with the current weights
    when training starts (`fill`), unless it already holds some, e.g. from a
    checkpoint, so the first step has `d = 0` and the step itself never
    branches on it.

    A second flag says that the copy is still the current weights: set when
    the copy is taken, cleared by the first update the optimizer applies (or,
    when training starts again, if the weights were changed meanwhile). While
    it is set, `d` is exactly 0. Keeping a flag spares the step a comparison
    that would read every weight twice.
    """

    def build(self, wrapper):
        self.copies = [
            wrapper.add_weight(
                shape=v.shape,
                dtype=v.dtype,
                initializer="zeros",
                trainable=False,
                name=f"{self.name}_{i}",
            )
            for i, v in enumerate(wrapper.trainable_variables)
        ]
        self.filled = wrapper.add_weight(
            shape=(), dtype="float32", initializer="zeros", trainable=False,
            name=f"{self.name}_filled",
        )
        self.current = wrapper.add_weight(
            shape=(), dtype="float32", initializer="zeros", trainable=False,
            name=f"{self.name}_current",
        )

    def fill(self, trainable_variables):
        if float(ops.convert_to_numpy(self.filled)) <= 0:
            for copy, variable in zip(self.copies, trainable_variables):
                copy.assign(ops.copy(variable.value))  # a buffer of its own (JAX donates)
            self.filled.assign(1.0)
            self.current.assign(1.0)
        elif float(ops.convert_to_numpy(self.current)) > 0:
            equal = _backend.all_equal(
                [copy.value for copy in self.copies], [v.value for v in trainable_variables]
            )
            self.current.assign(1.0 if bool(ops.convert_to_numpy(equal)) else 0.0)

    def reference_weights(self, step):
        return [step.value_of(copy) for copy in self.copies]

    def is_current(self, step):
        return ops.greater(step.value_of(self.current), 0.0)

    def predictions(self, step, weights):
        return step.forward(self.reference_weights(step))

    def update(self, step):
        return list(zip(self.copies, self.new_copies(step))) + self._moved()

    def _moved(self):
        """The update that clears the `current` flag: after an applied update
        the weights have moved away from the copy."""
        return [(self.current, ops.zeros((), "float32"))]

    def new_copies(self, step):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_tram")
class PreviousWeights(_WeightReference):
    """The weights of the previous step, `θ_{t-1}` (TRAM-θ_{t-1}, TRPO)."""

    name = "previous_weights"

    def new_copies(self, step):
        return list(step.weights)


@keras.saving.register_keras_serializable(package="keras_tram")
class InitialWeights(_WeightReference):
    """The weights when training first starts, `θ_0` (TRAM-θ_0).

    For a pre-trained model these are the pre-trained weights. They are taken
    when `fit` (or `train_on_batch`) first runs, not when the wrapper is
    made, and kept in checkpoints, so resumed training keeps the original
    `θ_0`.
    """

    name = "initial_weights"

    def update(self, step):
        return self._moved()


@keras.saving.register_keras_serializable(package="keras_tram")
class MovingAverageWeights(_WeightReference):
    """An exponential moving average of the weights (MESA).

    At step `t` the reference is the average of the weights of steps
    `0 .. t-1` (the current weights at the first step), updated after each
    step as `v ← v + (1 - decay) · (θ_t - v)`. With `decay=0` it is the
    previous step's weights.

    Args:
        decay: in [0, 1].
    """

    name = "moving_average_weights"

    def __init__(self, decay=0.999):
        self.decay = check_unit_interval("decay", decay)

    def new_copies(self, step):
        # v + (1 - decay)(θ - v) leaves v exactly as it is when θ == v.
        return [
            v + ops.cast(1.0 - self.decay, v.dtype) * (w - v)
            for v, w in zip(self.reference_weights(step), step.weights)
        ]

    def get_config(self):
        return {"decay": self.decay}


@keras.saving.register_keras_serializable(package="keras_tram")
class NoisedInputs(Reference):
    """The same weights on noised inputs, `x + z` with `z ~ N(0, σ²)` (TRAM-x, R3F).

    Float inputs (images, features) are noised directly. For token-id inputs
    the noise goes on the output of the token-embedding layer: `noise_layer`
    names it (a layer name or the layer itself); left as `None`, the wrapper
    looks for a `token_embedding` attribute (keras-hub backbones) and then for
    the model's first `keras.layers.Embedding`. A fresh `z` is drawn each
    step; the caller's inputs are never changed.

    Args:
        stddev: the noise standard deviation σ, >= 0.
        noise_layer: where to add the noise for token-id models.
    """

    def __init__(self, stddev=0.1, noise_layer=None):
        self.stddev = check_non_negative("noise_stddev", stddev)
        if noise_layer is not None and not isinstance(noise_layer, (str, keras.layers.Layer)):
            raise TypeError(
                "`noise_layer` must be a layer name, a `keras.layers.Layer` or None; "
                f"received {noise_layer!r}."
            )
        self.noise_layer = noise_layer

    @property
    def uses_noise(self):
        return True

    def predictions(self, step, weights):
        return step.forward(weights, noise=self)

    def get_config(self):
        layer = self.noise_layer
        return {
            "stddev": self.stddev,
            "noise_layer": layer.name if isinstance(layer, keras.layers.Layer) else layer,
        }
