"""`StatisticMeans`: the metric that logs a step's statistics."""

import keras
from keras import ops


class StatisticMeans(keras.metrics.Metric):
    """The means of a step's logged statistics over the steps that were kept,
    and the number of skipped steps, as one metric: one update per step for
    all of them (on torch each metric update costs a tenth of a millisecond).

    `result()` is a dict: each name's mean (0 before any kept step) and
    `skipped_steps`. (`keras_tram.analysis.StepStatistics` is the callback
    that records them per step.)
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
