"""Plots of step statistics and of accuracy against sharpness (matplotlib)."""

import numpy as np


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
                # Steps without a value (NaN: skipped, or between the full steps
                # of `perturbation_every` > 1) are left out, not drawn as gaps.
                values = np.asarray(steps[name], dtype="float64")
                kept = np.flatnonzero(np.isfinite(values))
                (lines[label],) = axis.plot(kept, values[kept], linewidth=1, **styles[label])
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
