"""Keskar et al.'s ε-sharpness of the loss around a model's weights."""

import keras
from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram._step import batch as _batch
from keras_tram.analysis._models import unwrapped
from keras_tram.pieces._validation import check_non_negative
from keras_tram.pieces._validation import check_positive_int


def _loss_object(model, loss):
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "`loss`: the model is not compiled with a loss; pass `loss=` "
                "(a `keras.losses.Loss`, a loss function or its name)."
            )
    if isinstance(loss, keras.losses.Loss):
        return loss
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss
    if not callable(loss):
        raise TypeError(f"`loss` must be a Keras loss or a callable; received {loss!r}.")
    return _FunctionLoss(loss)


class _FunctionLoss(keras.losses.Loss):
    """A loss function `fn(y_true, y_pred)` with Keras's weighting and reduction."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _batches(x, y, sample_weight, batch_size):
    n = len(keras.tree.flatten(x)[0])
    return [
        (*_batch.rows((x, y, sample_weight), i, i + batch_size), min(batch_size, n - i))
        for i in range(0, n, batch_size)
    ], n


def epsilon_sharpness(model, x, y, sample_weight=None, loss=None, epsilon=1e-5, steps=5,
                      learning_rate=8e-5, batch_size=32, accumulation_steps=4):
    """Keskar et al.'s ε-sharpness of the loss on `(x, y)` at the model's weights.

    `100 · (max_{δ ∈ C} L(θ + δ) - L(θ)) / (1 + L(θ))`, the box
    `C = {δ : |δ_i| ≤ ε (|θ_i| + 1)}` over the trainable weights, `L` the mean
    loss over all of `(x, y)`. The maximum is sought by `steps` steps of
    projected gradient ascent from `δ = 0`, each with the gradient averaged
    over `accumulation_steps` batches of `batch_size` (taken in order,
    cycling), as in the TRAM paper's analysis (SGD, learning rate 8e-5,
    batch 32, 4 accumulation steps, ε = 1e-5). The ascent never goes below
    `δ = 0`, so the result is >= 0.

    Cost: `steps · accumulation_steps` forward-backward passes on a batch,
    plus two forward passes over the data. The weights are never written
    (the ascent runs on copies); the model is exactly as it was.

    Args:
        model: a `keras.Model` (a `SharpnessAware` wrapper measures its model).
        x, y, sample_weight: NumPy arrays (or nested structures of them).
        loss: the loss; by default the one the model was compiled with.
        epsilon: the box's relative size ε, >= 0.

    Returns:
        The ε-sharpness as a Python float.

    Example:

    ```python
    import numpy as np, keras
    from keras_tram import analysis
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x, y = np.ones((8, 3)), np.zeros(8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert analysis.epsilon_sharpness(model, x, y, loss=loss, epsilon=1e-3) >= 0
    ```
    """
    epsilon = check_non_negative("epsilon", epsilon)
    learning_rate = check_non_negative("learning_rate", learning_rate)
    steps = _check_count("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    accumulation_steps = check_positive_int("accumulation_steps", accumulation_steps)
    loss_fn = _loss_object(model, loss)
    target = unwrapped(model)
    weights = _backend.values_of(target.trainable_variables)
    non_trainable = _backend.values_of(target.non_trainable_variables)
    batches, n = _batches(x, y, sample_weight, batch_size)

    def batch_loss(values, batch):
        bx, by, bw, _ = batch
        y_pred, _ = target.stateless_call(values, non_trainable, bx, training=False)
        return ops.cast(loss_fn(by, y_pred, sample_weight=bw), "float32"), None

    def mean_loss(values):
        total = sum(float(ops.convert_to_numpy(batch_loss(values, b)[0])) * b[3] for b in batches)
        return total / n

    bounds = [epsilon * (ops.abs(ops.cast(w, "float32")) + 1.0) for w in weights]
    delta = [ops.zeros_like(b) for b in bounds]
    for step in range(steps):
        gradient = None
        for k in range(accumulation_steps):
            batch = batches[(step * accumulation_steps + k) % len(batches)]
            shifted = _shifted(weights, delta)
            _, grads = _backend.value_and_grad(lambda v, b=batch: batch_loss(v, b))(shifted)
            grads = [ops.cast(g, "float32") / accumulation_steps for g in grads]
            gradient = grads if gradient is None else [a + g for a, g in zip(gradient, grads)]
        delta = [
            ops.minimum(ops.maximum(d + learning_rate * g, -bound), bound)
            for d, g, bound in zip(delta, gradient, bounds)
        ]
    base = mean_loss(weights)
    increase = max(mean_loss(_shifted(weights, delta)) - base, 0.0)
    return 100.0 * increase / (1.0 + base)


def _shifted(weights, delta):
    return [w + ops.cast(d, w.dtype) for w, d in zip(weights, delta)]


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an integer >= 0; received {value!r}.")
    return value
