"""`StatisticMeans`: the metric that logs a step's statistics."""

import keras
from keras import ops


class StatisticMeans(keras.metrics.Metric):
    """The means of a step's logged statistics over the steps that were kept,
    and the number of skipped steps, as one metric: one update per step for
    all of them (on torch each metric update costs a tenth of a millisecond).

    `result()` is a dict: each name's mean (0 before any kept step) and
    `skipped_steps`. The names in `full_step_names` (the perturbation's
    statistics of a method that reuses its sharpness direction) are averaged
    over the kept full steps only, whose number is then `full_steps`.
    (`keras_tram.analysis.StepStatistics` is the callback that records them
    per step.)
    """

    def __init__(self, names, full_step_names=(), name="step_statistics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = tuple(names)
        self.full_step_names = tuple(full_step_names)
        self.full_kept = None
        if self.full_step_names:
            self.full_kept = self.add_variable(shape=(), initializer="zeros", name="full_kept")
        self.totals = self.add_variable(
            shape=(len(self.names),), initializer="zeros", name="totals"
        )
        self.kept = self.add_variable(shape=(), initializer="zeros", name="kept")
        self.skipped = self.add_variable(shape=(), initializer="zeros", name="skipped")

    def update_state(self, values, finite, skip_weight=1.0, full=True):
        """Adds `values` (one scalar per name) if `finite`, else counts a skip
        (of weight `skip_weight`); those of `full_step_names` only if `full`
        too."""
        values = ops.stack([ops.cast(v, "float32") for v in values])
        keep = finite
        if self.full_kept is not None:
            counted = ops.logical_and(finite, full)
            self.full_kept.assign_add(ops.cast(counted, "float32"))
            on_full_steps = ops.convert_to_tensor(
                [name in self.full_step_names for name in self.names]
            )
            keep = ops.where(on_full_steps, counted, finite)
        self.totals.assign_add(ops.where(keep, values, 0.0))
        kept = ops.cast(finite, "float32")
        self.kept.assign_add(kept)
        self.skipped.assign_add((1.0 - kept) * skip_weight)

    def result(self):
        totals = ops.convert_to_tensor(self.totals)
        means = ops.divide_no_nan(totals, self.kept)
        results = {name: means[i] for i, name in enumerate(self.names)}
        for i, name in enumerate(self.names):
            if name in self.full_step_names:
                results[name] = ops.divide_no_nan(totals[i], self.full_kept)
        results["skipped_steps"] = ops.convert_to_tensor(self.skipped)
        if self.full_kept is not None:
            results["full_steps"] = ops.convert_to_tensor(self.full_kept)
        return results

    def get_config(self):
        config = {"names": self.names, **super().get_config()}
        if self.full_step_names:
            config["full_step_names"] = self.full_step_names
        return config
