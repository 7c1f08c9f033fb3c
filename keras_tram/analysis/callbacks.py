"""`fit` callbacks that record the step statistics, and the sharpness and CKA."""

import math

import keras

from keras_tram.analysis.cka import linear_cka
from keras_tram.analysis.cka import representations
from keras_tram.analysis.sharpness import epsilon_sharpness
from keras_tram.pieces._validation import check_positive_int


class StepStatistics(keras.callbacks.Callback):
    """Records each training step's `radius`, `divergence`, `grad_norm` (and
    any other step statistic the method logs) in `self.steps`, a dict of
    lists, one value per step across epochs (NaN for a skipped step).

    `fit` logs these as running means over the epoch; the per-step value is
    recovered from consecutive means (in float64; relative error about
    `steps_so_far · 1e-7` of float32's rounding). With
    `steps_per_execution = k`, one value covers the mean of `k` steps. A
    method with `perturbation_every` > 1 logs its perturbation's statistics
    (`radius`, `divergence`, `relative_perturbation`) over its full steps
    only: they are NaN on the steps in between.

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
    assert len(trace.steps["radius"]) == 4
    ```
    """

    def __init__(self, names=("radius", "divergence", "grad_norm"), writer=None):
        super().__init__()
        self.names = tuple(names)
        self.writer = writer
        self.steps = {}
        self._global_step = 0
        self._full_step_names = ()

    def on_train_begin(self, logs=None):
        # Read once: on JAX, `self.model` syncs every variable when read.
        tracker = getattr(self.model, "statistics_tracker", None)
        self._full_step_names = getattr(tracker, "full_step_names", ())

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = ({}, {})

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        kept = {None: batch + 1 - float(logs.get("skipped_steps", 0.0))}
        if "full_steps" in logs:
            kept["full_steps"] = float(logs["full_steps"])
        previous_kept, previous_totals = self._previous
        totals = {}
        for name in self.names:
            if name not in logs:
                continue
            count = "full_steps" if name in self._full_step_names and "full_steps" in kept else None
            totals[name] = kept[count] * float(logs[name])
            added = kept[count] - previous_kept.get(count, 0.0)
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
