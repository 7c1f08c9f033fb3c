"""How a divergence over a batch becomes one number `d`.

The pointwise divergence (summed over the classes) is given per position:
`(batch,)` for a classifier, `(batch, time)` for a sequence model. A reduction
turns it into sums that add up over the parts of a batch (replicas, chunks),
a numerator and its denominators, and then into `d`:

- `PerPosition()` (the paper's, the default): the mean over examples (and
  positions) of the KL summed over classes, weighted by the sample weights, so
  that padded positions do not count: `Σ w·KL / Σ w`.
- `ElementMean(logit_scale)` (the authors' released code): PyTorch's
  `kl_div(..., reduction="mean")`, the mean over every element (batch ×
  classes, × positions for sequences, padding included), divided by the batch
  size again and multiplied by `logit_scale`: `logit_scale · Σ KL / (B·T·C·B)`.
  It exists to reproduce published numbers; it is not the paper's equation.

    >>> import numpy as np
    >>> from keras_tram import reduction
    >>> kl = np.array([0.2, 0.4], "float32")   # two examples of 5 classes
    >>> sums = reduction.PerPosition().sums(kl, classes=5)
    >>> round(float(reduction.PerPosition().value(*sums)), 6)
    0.3
    >>> sums = reduction.ElementMean().sums(kl, classes=5)
    >>> round(float(reduction.ElementMean().value(*sums)), 6)  # 0.6 / (2 · 5) / 2
    0.03
"""

import keras
from keras import ops

from keras_tram.pieces._component import Configurable
from keras_tram.pieces._validation import check_non_negative


def ratio(numerator, denominator):
    """`numerator / denominator`, and 0 where the denominator is 0 (an empty batch)."""
    positive = denominator > 0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1.0), 0.0)


class Reduction(Configurable):
    """Base class: `sums(per_position, classes, sample_weight)` returns
    `(numerator, denominators)`, float32 sums over this part of the batch that
    add up over parts; `value(numerator, denominators)` gives `d` from them."""

    def sums(self, per_position, classes, sample_weight=None):
        raise NotImplementedError

    def value(self, numerator, denominators):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_tram")
class PerPosition(Reduction):
    """The paper's `E_x KL`: `Σ w·KL / Σ w` over the examples (and positions),
    `w` the sample weights (1 without them)."""

    def sums(self, per_position, classes, sample_weight=None):
        per_position = ops.cast(per_position, "float32")
        if sample_weight is None:
            return ops.sum(per_position), (ops.cast(ops.size(per_position), "float32"),)
        weight = ops.cast(sample_weight, "float32")
        while len(weight.shape) < len(per_position.shape):
            weight = ops.expand_dims(weight, -1)
        weight = ops.broadcast_to(weight, ops.shape(per_position))
        return ops.sum(weight * per_position), (ops.sum(weight),)

    def value(self, numerator, denominators):
        (weight,) = denominators
        return ratio(numerator, weight)


@keras.saving.register_keras_serializable(package="keras_tram")
class ElementMean(Reduction):
    """The released code's `d`: `logit_scale · Σ KL / (elements · batch)`.

    `elements` counts every position and class (padding included: the
    sample weights are not used), `batch` the examples.

    Args:
        logit_scale: a finite number >= 0 multiplying `d` (the released
            code's default is 1).
    """

    def __init__(self, logit_scale=1.0):
        self.logit_scale = check_non_negative("logit_scale", logit_scale)

    def sums(self, per_position, classes, sample_weight=None):
        per_position = ops.cast(per_position, "float32")
        positions = ops.cast(ops.size(per_position), "float32")
        batch = ops.cast(ops.shape(per_position)[0], "float32")
        return ops.sum(per_position), (positions * ops.cast(classes, "float32"), batch)

    def value(self, numerator, denominators):
        elements, batch = denominators
        return self.logit_scale * ratio(numerator, elements * batch)

    def get_config(self):
        return {"logit_scale": self.logit_scale}
