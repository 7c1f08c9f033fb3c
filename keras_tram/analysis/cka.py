"""Linear CKA (Kornblith et al., 2019) between two sets of representations,
whole or by minibatches, and a model's representations at a layer."""

import math

import keras
import numpy as np
from keras import ops

from keras_tram._keras import pipeline as _pipeline
from keras_tram.analysis._models import unwrapped


def _centered(features):
    features = ops.convert_to_tensor(features)
    features = ops.reshape(ops.cast(features, "float32"), (ops.shape(features)[0], -1))
    return features - ops.mean(features, axis=0, keepdims=True)


def linear_cka(features_a, features_b):
    """Linear CKA between two representations of the same `n` examples.

    `‖Bᵀ A‖²_F / (‖Aᵀ A‖_F ‖Bᵀ B‖_F)` for the column-centred `A` (n, p) and
    `B` (n, q) (each example's features flattened): 1 for representations
    equal up to an orthogonal transform and isotropic scaling, 0 for
    uncorrelated ones. Computed in whichever of feature space (`p × q`) or
    example space (`n × n`) is smaller. For more examples than fit in memory,
    use `MinibatchCKA`.

    Returns:
        A Python float in [0, 1].
    """
    a, b = _centered(features_a), _centered(features_b)
    n, p, q = a.shape[0], a.shape[1], b.shape[1]
    if n is not None and n < p + q:
        gram_a, gram_b = ops.matmul(a, ops.transpose(a)), ops.matmul(b, ops.transpose(b))
        cross = ops.sum(gram_a * gram_b)
        self_a, self_b = ops.sqrt(ops.sum(gram_a**2)), ops.sqrt(ops.sum(gram_b**2))
    else:
        cross = ops.sum(ops.matmul(ops.transpose(b), a) ** 2)
        self_a = ops.sqrt(ops.sum(ops.matmul(ops.transpose(a), a) ** 2))
        self_b = ops.sqrt(ops.sum(ops.matmul(ops.transpose(b), b) ** 2))
    denominator = float(ops.convert_to_numpy(self_a * self_b))
    return float(ops.convert_to_numpy(cross)) / denominator if denominator > 0 else 0.0


def _unbiased_hsic(gram_a, gram_b):
    """Song et al.'s unbiased HSIC estimator of two n × n Gram matrices (n >= 4)."""
    n = gram_a.shape[0]
    a = gram_a * (1.0 - np.eye(n))
    b = gram_b * (1.0 - np.eye(n))
    sum_a, sum_b = a.sum(axis=0), b.sum(axis=0)
    value = (
        (a * b).sum()
        + sum_a.sum() * sum_b.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * sum_a @ sum_b
    )
    return value / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA over many minibatches (Nguyen et al., 2021).

    Each `update(features_a, features_b)` adds the unbiased HSIC estimates of
    one minibatch (at least 4 examples); `result()` is
    `mean HSIC(A, B) / sqrt(mean HSIC(A, A) · mean HSIC(B, B))`. Memory is one
    minibatch's Gram matrices, whatever the number of examples.

        >>> import numpy as np
        >>> cka = MinibatchCKA()
        >>> x = np.random.default_rng(0).normal(size=(64, 5))
        >>> for rows in np.split(x, 4):
        ...     cka.update(rows, 2.0 * rows)
        >>> round(cka.result(), 6)
        1.0
    """

    def __init__(self):
        self._sums = np.zeros(3)
        self.batches = 0

    def update(self, features_a, features_b):
        a = np.asarray(ops.convert_to_numpy(features_a), np.float64)
        b = np.asarray(ops.convert_to_numpy(features_b), np.float64)
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        if len(a) != len(b) or len(a) < 4:
            raise ValueError(
                "`features_a` and `features_b` must hold the same examples, at least 4 "
                f"per minibatch; received {len(a)} and {len(b)} rows."
            )
        gram_a, gram_b = a @ a.T, b @ b.T
        self._sums += [
            _unbiased_hsic(gram_a, gram_b),
            _unbiased_hsic(gram_a, gram_a),
            _unbiased_hsic(gram_b, gram_b),
        ]
        self.batches += 1

    def result(self):
        cross, self_a, self_b = self._sums
        if self_a <= 0 or self_b <= 0:
            return 0.0
        return float(cross / math.sqrt(self_a * self_b))


def representations(model, x, layer=None, batch_size=32):
    """The representation a model's head reads: the input of `layer` (by
    default the model's last layer), for inputs `x`, as a NumPy array of
    shape `(examples, features)`.

    Works for functional and Sequential models and keras-hub tasks (their raw
    inputs go through the task's preprocessor); a `SharpnessAware` wrapper
    gives its wrapped model's.
    """
    model = unwrapped(model)
    layer = model.layers[-1] if layer is None else layer
    if isinstance(layer, str):
        layer = model.get_layer(layer)
    extractor = keras.Model(model.inputs, layer.input)
    preprocess = _pipeline.preprocessing_of(model)
    if preprocess is not None:
        x = _pipeline.dataset(preprocess, x, batch_size=batch_size)
        features = extractor.predict(x, verbose=0)
    else:
        features = extractor.predict(x, batch_size=batch_size, verbose=0)
    features = np.asarray(features)
    return features.reshape(len(features), -1)
