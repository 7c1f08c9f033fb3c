"""Trust-region distances: divergences between predictive distributions, and
the references they are measured against.

A reference supplies the predictions a step is compared with: the model's own
predictions under other weights (previous step, start of training, a moving
average) or on noised inputs. The divergence `d` between the reference and the
current predictions is TRAM's radius (`keras_tram.radius.TrustRegion`) or a
penalty added to the loss (`keras_tram.penalty.Penalty`: TRPO, R3F, MESA).

    >>> import numpy as np
    >>> from keras_tram import trust_region
    >>> p = np.log(np.array([[0.5, 0.5]], "float32"))
    >>> q = np.log(np.array([[0.9, 0.1]], "float32"))
    >>> round(float(trust_region.divergence(p, q, "kl")), 4)  # KL(p || q)
    0.5108
"""

import keras
from keras import ops

from keras_tram import _backend
from keras_tram import reduction as reduction_lib
from keras_tram._config import Component
from keras_tram._logits_kl import kl_of_logits as _kl_of_logits
from keras_tram._validation import check_choice
from keras_tram._validation import check_instance
from keras_tram._validation import check_non_negative
from keras_tram._validation import check_unit_interval

DIVERGENCES = ("kl", "reverse_kl", "symmetric_kl")


def _log_probabilities(outputs, from_logits):
    outputs = ops.cast(outputs, "float32")
    if from_logits:
        return ops.log_softmax(outputs, axis=-1)
    return ops.log(ops.clip(outputs, 1e-12, 1.0))


def divergence(reference, current, kind="kl", sample_weight=None, from_logits=True,
               reduction=None):
    """The divergence between two batches of predictions, in float32.

    Args:
        reference, current: logits (or probabilities, `from_logits=False`)
            with the classes on the last axis: `(batch, classes)` or
            `(batch, time, vocabulary)`.
        kind: `"kl"` for `KL(reference ‖ current)`, `"reverse_kl"` for
            `KL(current ‖ reference)`, `"symmetric_kl"` for their sum.
        sample_weight: optional weights over the leading axes (`(batch,)` or
            `(batch, time)`, e.g. a padding mask). With weights the result is
            `Σ w·KL / Σ w`: positions of weight 0 do not count at all.
        reduction: a `keras_tram.reduction.Reduction`; the default,
            `PerPosition()`, is the paper's.

    Returns:
        By default the per-position divergence summed over classes, averaged
        over examples (and positions), as a float32 scalar; 0 for an empty
        batch.
    """
    reduction = reduction_lib.PerPosition() if reduction is None else reduction
    numerator, denominators = reduction.sums(
        pointwise_divergence(reference, current, kind, from_logits),
        _classes(current), sample_weight,
    )
    return reduction.value(numerator, denominators)


def pointwise_divergence(reference, current, kind="kl", from_logits=True):
    """The divergence at each position, summed over the classes (the last axis)."""
    check_choice("divergence", kind, DIVERGENCES)
    if from_logits and kind == "kl":
        return _kl_of_logits(reference, current)
    if from_logits and kind == "reverse_kl":
        return _kl_of_logits(current, reference)
    if from_logits:
        return _kl_of_logits(reference, current) + _kl_of_logits(current, reference)
    log_p = _log_probabilities(reference, from_logits)
    log_q = _log_probabilities(current, from_logits)
    if kind == "kl":
        pointwise = ops.exp(log_p) * (log_p - log_q)
    elif kind == "reverse_kl":
        pointwise = ops.exp(log_q) * (log_q - log_p)
    else:
        pointwise = (ops.exp(log_p) - ops.exp(log_q)) * (log_p - log_q)
    return ops.sum(pointwise, axis=-1)


def _classes(outputs):
    return ops.shape(outputs)[-1]


def select_logits(outputs, key="logits"):
    """The logits among a model's outputs: the `key` entry of a dict output."""
    if isinstance(outputs, dict):
        if key not in outputs:
            raise ValueError(
                f"The model returns a dict with keys {sorted(outputs)}; the "
                f"trust-region divergence needs its logits under `output_key`="
                f"{key!r}. Pass the right `output_key`."
            )
        return outputs[key]
    if isinstance(outputs, (list, tuple)):
        raise ValueError(
            "The model returns several outputs; the trust-region divergence needs "
            "a single logits tensor, or a dict output with an `output_key` entry."
        )
    return outputs


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


class Distance(Component):
    """`d(reference ‖ current)` on the step's batch: what TRAM's radius and the
    trust-region penalties have in common.

    Args:
        reference: a `Reference`.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.
        from_logits: whether the model outputs logits (else probabilities).
        output_key: the entry of a dict output that holds the logits.
        reduction: a `keras_tram.reduction.Reduction`, how the batch's
            pointwise divergence becomes `d`; None (the default) is the
            paper's `PerPosition()`.
    """

    def __init__(self, reference, divergence="kl", from_logits=True, output_key="logits",
                 reduction=None):
        self.reference = check_instance("reference", reference, Reference)
        self.divergence = check_choice("divergence", divergence, DIVERGENCES)
        self.from_logits = bool(from_logits)
        self.output_key = output_key
        if reduction is not None:
            check_instance("reduction", reduction, reduction_lib.Reduction)
        self.reduction = reduction_lib.PerPosition() if reduction is None else reduction

    def build(self, wrapper):
        self.reference.build(wrapper)

    def fill(self, trainable_variables):
        self.reference.fill(trainable_variables)

    def update(self, step):
        return self.reference.update(step)

    @property
    def uses_noise(self):
        return self.reference.uses_noise

    def measure(self, step, weights, current, replica_sum=_backend.replica_sum,
                at_step_weights=True):
        """`d` for predictions `current` at `weights`, as `(share, d)`; exactly
        0 when `weights` are the step's own (`at_step_weights`) and the
        reference is the model there.

        `d` is measured over the batch of every replica (`replica_sum` adds
        up the replicas' sums; pass an identity for one replica's own `d`).
        `share` is this replica's part of it, the one to differentiate: the
        replicas' shares add up to `d`, as their gradients do.
        """
        current = select_logits(current, self.output_key)
        numerator, denominators = self.reduction.sums(
            pointwise_divergence(
                select_logits(self.reference.predictions(step, weights), self.output_key),
                current, self.divergence, self.from_logits,
            ),
            _classes(current), step.sample_weight,
        )
        denominators = replica_sum(list(denominators))
        share = self.reduction.value(numerator, denominators)
        (summed,) = replica_sum([ops.stop_gradient(numerator)])
        d = self.reduction.value(summed, denominators)
        is_current = self.reference.is_current(step) if at_step_weights else None
        if is_current is None:
            return share, d
        return ops.where(is_current, 0.0, share), ops.where(is_current, 0.0, d)

    def get_config(self):
        return {
            "reference": keras.saving.serialize_keras_object(self.reference),
            "divergence": self.divergence,
            "from_logits": self.from_logits,
            "output_key": self.output_key,
            **self._reduction_config(),
        }

    def _reduction_config(self):
        # The paper's reduction is left out, so that configs read as before.
        if isinstance(self.reduction, reduction_lib.PerPosition):
            return {}
        return {"reduction": keras.saving.serialize_keras_object(self.reduction)}


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
