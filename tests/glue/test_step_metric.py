"""The metric that logs the step statistics."""

import numpy as np
import pytest

from keras_tram._keras.step_metric import StatisticMeans


def test_step_statistics_average_the_kept_steps_and_count_the_skipped():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(6, 2)).astype("float32")
    finite = np.array([True, False, True, True, False, True])
    values[~finite, 1] = np.nan  # a skipped step's statistics are not finite
    metric = StatisticMeans(("radius", "grad_norm"))
    assert {k: float(v) for k, v in metric.result().items()} == {
        "radius": 0.0, "grad_norm": 0.0, "skipped_steps": 0.0}
    for row, keep in zip(values, finite):
        metric.update_state(list(row), keep, skip_weight=0.5)
    result = {k: float(v) for k, v in metric.result().items()}
    expected = values[finite].mean(axis=0)
    np.testing.assert_allclose([result["radius"], result["grad_norm"]], expected, rtol=1e-6)
    assert result["skipped_steps"] == 0.5 * (~finite).sum()
    metric.reset_state()
    assert float(metric.result()["skipped_steps"]) == 0.0


def test_the_metric_keeps_its_old_name_with_a_warning():
    from keras_tram.methods import sharpness_aware  # keras_tram.wrapper in 0.1

    with pytest.warns(DeprecationWarning, match="StatisticMeans"):
        assert sharpness_aware.StepStatistics is StatisticMeans
    with pytest.raises(AttributeError, match="NoSuchName"):
        sharpness_aware.NoSuchName
