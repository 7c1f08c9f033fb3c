"""Why a method generalizes: ε-sharpness, linear CKA, and the step statistics.

The two measurements of the TRAM paper's analysis: how sharp the loss surface
is around the trained weights (Keskar et al., 2017), and how close the trained
model's representations stay to the pre-trained model's (linear CKA,
Kornblith et al., 2019), with `fit` callbacks that record them.

    >>> import numpy as np
    >>> from keras_tram import analysis
    >>> features = np.random.default_rng(0).normal(size=(50, 8))
    >>> round(analysis.linear_cka(features, 3.0 * features), 6)
    1.0
"""

import math

import keras
import numpy as np
from keras import ops

from keras_tram import _backend
from keras_tram import _batch
from keras_tram import _pipeline
from keras_tram._validation import check_non_negative
from keras_tram._validation import check_positive_int

# --------------------------------------------------------------------- CKA


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
    model = model.model if _is_wrapper(model) else model
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


# --------------------------------------------------------------- sharpness


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
    analysis.epsilon_sharpness(model, x, y, loss=loss, epsilon=1e-3)  # a float >= 0
    ```
    """
    epsilon = check_non_negative("epsilon", epsilon)
    learning_rate = check_non_negative("learning_rate", learning_rate)
    steps = _check_count("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    accumulation_steps = check_positive_int("accumulation_steps", accumulation_steps)
    loss_fn = _loss_object(model, loss)
    target = model.model if _is_wrapper(model) else model
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


def _is_wrapper(model):
    from keras_tram.wrapper import SharpnessAware

    return isinstance(model, SharpnessAware)


# --------------------------------------------------------------- callbacks


class StepStatistics(keras.callbacks.Callback):
    """Records each training step's `radius`, `divergence`, `grad_norm` (and
    any other step statistic the method logs) in `self.steps`, a dict of
    lists, one value per step across epochs (NaN for a skipped step).

    `fit` logs these as running means over the epoch; the per-step value is
    recovered from consecutive means (in float64; relative error about
    `steps_so_far · 1e-7` of float32's rounding). With
    `steps_per_execution = k`, one value covers the mean of `k` steps.

    Args:
        names: which statistics to record (those the method does not log
            are left out).
        writer: an optional `tf.summary` writer
            (`tf.summary.create_file_writer(log_dir)`) for TensorBoard.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.TRAM(model)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trace = keras_tram.analysis.StepStatistics()
    wrapped.fit(np.ones((16, 4)), np.zeros(16), batch_size=4, callbacks=[trace], verbose=0)
    len(trace.steps["radius"])  # 4
    ```
    """

    def __init__(self, names=("radius", "divergence", "grad_norm"), writer=None):
        super().__init__()
        self.names = tuple(names)
        self.writer = writer
        self.steps = {}
        self._global_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = (0, {})

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        kept = batch + 1 - float(logs.get("skipped_steps", 0.0))
        previous_kept, previous_totals = self._previous
        totals = {}
        for name in self.names:
            if name not in logs:
                continue
            totals[name] = kept * float(logs[name])
            added = kept - previous_kept
            value = (
                (totals[name] - previous_totals.get(name, 0.0)) / added if added > 0 else math.nan
            )
            self.steps.setdefault(name, []).append(value)
            self._write(name, value)
        self._previous = (kept, totals)
        self._global_step += 1

    def _write(self, name, value):
        if self.writer is None:
            return
        import tensorflow as tf

        # What `tf.summary.scalar` writes, without needing the tensorboard
        # package where the logs are written.
        metadata = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=1,  # scalar
        )
        with self.writer.as_default():
            tf.summary.write(name, tf.constant(value, tf.float32), step=self._global_step,
                             metadata=metadata)


class SharpnessAndCKA(keras.callbacks.Callback):
    """Every `every` epochs, the ε-sharpness on each dataset and the linear
    CKA between the model's representations now and when training began.

    Adds `<name>_sharpness` and `<name>_cka` to the epoch's logs (so to
    `History`) and keeps every measurement in `self.records`.

    Args:
        data: `{name: (x, y)}`, e.g. in-domain and out-of-domain sets.
        every: measure after every this many epochs.
        layer: the layer whose input is the representation (default: the
            model's last layer, its head).
        **sharpness_options: passed to `epsilon_sharpness` (`epsilon`,
            `steps`, `learning_rate`, `batch_size`, `accumulation_steps`,
            `loss`).
    """

    def __init__(self, data, every=1, layer=None, **sharpness_options):
        super().__init__()
        if not isinstance(data, dict) or not data:
            raise TypeError("`data` must be a non-empty dict {name: (x, y)}.")
        self.data = data
        self.every = check_positive_int("every", every)
        self.layer = layer
        self.sharpness_options = sharpness_options
        self.records = []

    def _features(self, x):
        return representations(self.model, x, self.layer)

    def on_train_begin(self, logs=None):
        self._initial = {name: self._features(x) for name, (x, _) in self.data.items()}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        record = {"epoch": epoch + 1}
        for name, (x, y) in self.data.items():
            record[f"{name}_sharpness"] = epsilon_sharpness(
                self.model, x, y, **self.sharpness_options
            )
            record[f"{name}_cka"] = linear_cka(self._features(x), self._initial[name])
        self.records.append(record)
        if logs is not None:
            logs.update({k: v for k, v in record.items() if k != "epoch"})


# ----------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "The plots need matplotlib (`pip install matplotlib`)."
        ) from error
    return plt


def plot_traces(traces, path, names=("radius", "divergence")):
    """Plots per-step traces, one panel per statistic, one line per run.

    Args:
        traces: `{label: StepStatistics.steps}` (or any `{name: [values]}`).
        path: the image file to write.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names) + 2, 3.8),
                                squeeze=False, layout="constrained")
    styles = {
        label: {"color": plt.get_cmap("tab10")(i % 10), "linestyle": ("-", "--", ":")[i // 10 % 3]}
        for i, label in enumerate(traces)
    }
    lines = {}
    for axis, name in zip(axes[0], names):
        for label, steps in traces.items():
            if name in steps:
                (lines[label],) = axis.plot(steps[name], linewidth=1, **styles[label])
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_yscale("symlog", linthresh=1e-4)
    figure.legend(list(lines.values()), list(lines), loc="outside right center", fontsize=7)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_accuracy_vs_sharpness(points, path, xlabel="ε-sharpness", ylabel="accuracy"):
    """A scatter of `{label: (sharpness, accuracy)}` written to `path`."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 4))
    for label, (sharpness, accuracy) in points.items():
        axis.scatter([sharpness], [accuracy])
        axis.annotate(label, (sharpness, accuracy), fontsize=7)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
