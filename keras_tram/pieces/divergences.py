"""Trust-region distances: divergences between predictive distributions, and
`Distance`, the divergence `d(reference ‖ current)` on a step's batch.

The divergence `d` between a reference's predictions
(`keras_tram.references`) and the current ones is TRAM's radius
(`keras_tram.radius.TrustRegion`) or a penalty added to the loss
(`keras_tram.penalty.Penalty`: TRPO, R3F, MESA).

    >>> import numpy as np
    >>> from keras_tram import divergences
    >>> p = np.log(np.array([[0.5, 0.5]], "float32"))
    >>> q = np.log(np.array([[0.9, 0.1]], "float32"))
    >>> round(float(divergences.divergence(p, q, "kl")), 4)  # KL(p || q)
    0.5108
"""

import keras
from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram.pieces import reduction as reduction_lib
from keras_tram.pieces._component import Component
from keras_tram.pieces._logits_kl import kl_of_logits as _kl_of_logits
from keras_tram.pieces._validation import check_choice
from keras_tram.pieces._validation import check_instance
from keras_tram.pieces.references import Reference

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
