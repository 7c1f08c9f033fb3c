"""The demo's figures: no label overlaps another text however close the
points are, and the forest plot shows each method's interval in every panel."""

import numpy as np
import pytest

from keras_tram.experiments.demo import figures

METHODS = ["adam", "sam", "asam", "fsam", "tram-previous_step", "tram-pretrained",
           "tram-input_noise", "tram-fisher", "r3f", "trpo", "mesa",
           "tram-previous_step-released", "tram-pretrained-released"]
DOMAINS = ["printed (in domain)", "handwritten", "other"]


def record(higher_is_better, spread):
    """A record whose methods all sit within `spread` of each other."""
    rng = np.random.default_rng(0)
    summary, comparisons = {}, {}
    for method in METHODS:
        row = {d: {"mean": 0.7 + spread * rng.normal(), "std": 0.01} for d in DOMAINS}
        row[figures.OUT_OF_DOMAIN] = {"mean": 0.6 + spread * rng.normal(), "std": 0.01}
        row["step_seconds"] = {"mean": 0.01 * (1 + rng.random()), "std": 0.001}
        summary[method] = row
        if method != "adam":
            mean = spread * rng.normal()
            comparisons[method] = {"adam": {
                column: {"mean": mean, "low": mean - 0.01, "high": mean + 0.01,
                         "excludes_zero": abs(mean) > 0.01, "seeds": 3}
                for column in [*DOMAINS, figures.OUT_OF_DOMAIN]
            }}
    return {"task": "digits", "metric": "accuracy", "higher_is_better": higher_is_better,
            "domains": DOMAINS, "methods": METHODS, "seeds": [0, 1, 2], "backend": "jax",
            "summary": summary, "comparisons": comparisons, "kind": "demo"}


@pytest.mark.parametrize("spread", [0.0, 1e-4, 0.05])
@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize("draw", ["scatter", "cost", "forest"])
def test_no_label_overlaps_another_text(draw, higher_is_better, spread):
    made = record(higher_is_better, spread)
    figure = {
        "scatter": lambda: figures._scatter_figure(made),
        "cost": lambda: figures._cost_figure(made),
        "forest": lambda: figures.forest_figure([made, made]),
    }[draw]()
    labels = [t.get_text() for t in figure.axes[0].texts]
    if draw != "forest":
        assert sorted(labels) == sorted(METHODS)  # every point is labelled
    assert figures.overlapping_texts(figure) == []
    figures._pyplot().close(figure)


def test_overlaps_are_found_where_there_are_some():
    """The check itself can fail: two annotations written on one spot."""
    pyplot = figures._pyplot()
    figure, axes = pyplot.subplots()
    axes.annotate("first label", (0.5, 0.5))
    axes.annotate("second label", (0.5, 0.5))
    assert figures.overlapping_texts(figure) == [("first label", "second label")]
    pyplot.close(figure)


def test_the_forest_plot_has_every_method_in_the_same_order_in_every_panel():
    made = record(True, 0.05)
    figure = figures.forest_figure([made, made])
    methods = [m for m in METHODS if m != "adam"]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == methods
    for axes in figure.axes:  # one interval per method, a line at 0
        assert len(axes.containers) == len(methods)
        assert any(list(line.get_xdata()) == [0.0, 0.0] for line in axes.lines)
    figures._pyplot().close(figure)
