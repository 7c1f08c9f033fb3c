"""The demo's outputs: Markdown tables (also what the command prints), JSON,
CSV and plots, all made from the run's record alone."""

import csv
import json
import os

import numpy as np

from keras_tram import analysis
from keras_tram.demo import catalog

OUT_OF_DOMAIN = "out-of-domain avg"
STEP_COLUMNS = {"radius": "radius", "relative_perturbation": "‖ε‖/‖θ‖"}
# Extra per-domain measures a task may record, and how to show them.
EXTRAS = {
    "sharpness": "ε-sharpness (lower is flatter)",
    "cka_to_pretrained": "linear CKA to the pre-trained network (higher is closer)",
}


def digits(metric):
    """Decimals to show a metric with."""
    return 1 if metric == "perplexity" else 3


def stem(record):
    return record["task"] + ("-sweep" if record["kind"] == "sweep" else "")


def _cell(value, places):
    return f"{value['mean']:.{places}f} ± {value['std']:.{places}f}"


def _interval(value, places):
    mark = "*" if value["excludes_zero"] else ""
    return (f"{value['mean']:+.{places}f} [{value['low']:+.{places}f}, "
            f"{value['high']:+.{places}f}]{mark}")


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def text(record):
    """The run's tables in Markdown."""
    places = digits(record["metric"])
    domains = record["domains"]
    better = "higher" if record["higher_is_better"] else "lower"
    lines = [
        f"**{record['task']}**: {record['metric']} ({better} is better), mean ± std over "
        f"{len(record['seeds'])} seeds ({record['backend']}); "
        f"in domain: {domains[0]}.",
        "",
    ]
    header = ["method", *domains, OUT_OF_DOMAIN, *STEP_COLUMNS.values(), "s / run"]
    times = relative_time(record) if "adam" in record["summary"] else None
    if times:
        header.append("× Adam step" if timed_by(record) == "step_seconds" else "× Adam time")
    pretrained = dict(record["pretrained"])
    pretrained[OUT_OF_DOMAIN] = float(np.mean([pretrained[d] for d in domains[1:]]))
    rows = [["pre-trained, before fine-tuning",
             *(f"{pretrained[c]:.{places}f}" for c in [*domains, OUT_OF_DOMAIN]),
             *(["—"] * (len(STEP_COLUMNS) + 1 + bool(times)))]]
    for method, row in record["summary"].items():
        cells = [_cell(row[c], places) for c in [*domains, OUT_OF_DOMAIN]]
        cells += [f"{row[s]['mean']:.3g}" if s in row else "—" for s in STEP_COLUMNS]
        cells.append(f"{row['train_seconds']['mean']:.1f}")
        if times:
            cells.append(f"{times[method]:.2f}")
        rows.append([f"`{method}`", *cells])
    lines += _table(header, rows)
    if record["comparisons"]:
        baselines = sorted({b for c in record["comparisons"].values() for b in c},
                           key=lambda b: ["adam", "sam", "asam"].index(b)
                           if b in ("adam", "sam", "asam") else 9)
        sign = "higher" if record["higher_is_better"] else "lower"
        lines += [
            "",
            f"Paired differences over the {len(record['seeds'])} seeds (method − baseline; "
            f"{sign} is better), mean [95% interval]; * where the interval excludes 0:",
            "",
        ]
        header = ["method"] + [
            f"{label} vs its k=1 form" if b == catalog.FULL_STEP_FORM else f"{label} vs `{b}`"
            for b in baselines for label in ("in domain", "out of domain")
        ]
        rows = []
        for method, against in record["comparisons"].items():
            cells = []
            for b in baselines:
                for column in (domains[0], OUT_OF_DOMAIN):
                    cells.append(_interval(against[b][column], places + 1) if b in against
                                 else "—")
            rows.append([f"`{method}`", *cells])
        lines += _table(header, rows)
    for extra, title in EXTRAS.items():
        if not any(f"{extra} {domains[0]}" in row for row in record["summary"].values()):
            continue
        lines += ["", f"{title}, mean ± std over seeds:", ""]
        rows = [[f"`{m}`", *(_cell(row[f"{extra} {d}"], 3) for d in domains)]
                for m, row in record["summary"].items()]
        lines += _table(["method", *domains], rows)
    return "\n".join(lines)


def write(record, output):
    """Writes `<stem>.json`, `.csv`, `.md` and the plots; returns their paths."""
    os.makedirs(output, exist_ok=True)
    name = os.path.join(output, stem(record))
    with open(name + ".json", "w") as file:
        json.dump(record, file, indent=2)
    extras = [e for e in EXTRAS if all(e in r for r in record["runs"])]
    with open(name + ".csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "seed", "domain", record["metric"], *extras])
        for r in record["runs"]:
            for domain, value in r["scores"].items():
                writer.writerow([r["method"], r["seed"], domain, f"{value:.6g}",
                                 *(f"{r[e][domain]:.6g}" for e in extras)])
    with open(name + ".md", "w") as file:
        file.write(text(record) + "\n")
    files = [name + ".json", name + ".csv", name + ".md", name + ".png"]
    if record["kind"] == "sweep":
        plot_sweep(record, name + ".png")
        return files
    plot(record, name + ".png")
    if "adam" in record["summary"]:
        plot_cost(record, name + "-cost.png")
        files.append(name + "-cost.png")
    first = record["seeds"][0]
    traces = {r["method"]: r["per_step"] for r in record["runs"]
              if r["seed"] == first and r["per_step"]}
    if traces:
        analysis.plot_traces(traces, name + "-traces.png")
        files.append(name + "-traces.png")
    return files


def _axes_labels(record, axes):
    domains = record["domains"]
    reverse = not record["higher_is_better"]
    note = " (lower is better)" if reverse else ""
    axes.set_xlabel(f"{record['metric']}, {domains[0]}{note}")
    axes.set_ylabel(f"{record['metric']}, out of domain (mean of {len(domains) - 1}){note}")
    if reverse:  # better is up and to the right either way
        axes.invert_xaxis()
        axes.invert_yaxis()
    axes.grid(alpha=0.3)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot(record, path):
    """In-domain against out-of-domain score per method, with std error bars."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 5), dpi=120)
    for method, row in record["summary"].items():
        x, y = row[record["domains"][0]], row[OUT_OF_DOMAIN]
        axes.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o",
                      capsize=3, label=method)
        axes.annotate(method, (x["mean"], y["mean"]), textcoords="offset points",
                      xytext=(5, 5), fontsize=7)
    _axes_labels(record, axes)
    axes.set_title(f"{record['task']}: fine-tuning, {len(record['seeds'])} seeds "
                   f"({record['backend']})")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def timed_by(record):
    """What the cost is measured by: the time per step after the first
    (which traces and compiles), where every run recorded it (records of
    earlier versions did not), else the whole run's training time."""
    rows = record["summary"].values()
    return "step_seconds" if all("step_seconds" in row for row in rows) else "train_seconds"


def relative_time(record):
    """Each method's mean time (`timed_by`) over plain Adam's, in the same run."""
    key = timed_by(record)
    adam = record["summary"]["adam"][key]["mean"]
    return {m: row[key]["mean"] / adam for m, row in record["summary"].items()}


def plot_cost(record, path):
    """Cost against benefit, one point per method: training time relative to
    Adam (same run, same steps) against the out-of-domain score's paired
    difference to Adam with its 95% interval (the mean ± std over seeds
    without intervals); a method and its reusing form (`<name>-k5`) joined."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 5), dpi=120)
    times = relative_time(record)
    points = {}
    for method, row in record["summary"].items():
        paired = record["comparisons"].get(method, {}).get("adam")
        if method == "adam" and record["comparisons"]:
            points[method] = (0.0, 0.0, 0.0)
        elif paired is not None:
            value = paired[OUT_OF_DOMAIN]
            points[method] = (value["mean"], value["mean"] - value["low"],
                              value["high"] - value["mean"])
        else:
            value = row[OUT_OF_DOMAIN]
            points[method] = (value["mean"], value["std"], value["std"])
    for method, (y, below, above) in points.items():
        axes.errorbar(times[method], y, yerr=[[below], [above]], fmt="o", capsize=3,
                      color="k" if method == "adam" else None)
        axes.annotate(method, (times[method], y), textcoords="offset points",
                      xytext=(5, 4), fontsize=7)
        base = catalog.full_step_form(method)
        if base in points:
            axes.plot([times[base], times[method]], [points[base][0], y], ":", color="gray")
    axes.set_xlabel(
        "time per step relative to Adam (same run; the first step, which compiles, left out)"
        if timed_by(record) == "step_seconds"
        else "training time relative to Adam (same run, same steps)"
    )
    note = " (lower is better)" if not record["higher_is_better"] else ""
    if record["comparisons"]:
        axes.set_ylabel(f"out-of-domain {record['metric']} − Adam's{note}")
        axes.axhline(0.0, color="k", linewidth=0.5)
    else:
        axes.set_ylabel(f"{record['metric']}, out of domain, mean ± std{note}")
    if not record["higher_is_better"]:
        axes.invert_yaxis()  # better is up
    axes.grid(alpha=0.3)
    spread = "paired 95% intervals" if record["comparisons"] else "mean ± std"
    axes.set_title(f"{record['task']}: cost against benefit, {len(record['seeds'])} seeds, "
                   f"{spread} ({record['backend']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def plot_sweep(record, path):
    """One line per swept method through its grid (labelled by value), and
    the plain Adam point: how far each must be pushed to move the scores."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 5), dpi=120)
    families = {}
    for label, row in record["summary"].items():
        family, _, setting = label.partition(" ")
        families.setdefault(family, []).append((setting, row))
    domain = record["domains"][0]
    for family, points in families.items():
        xs = [row[domain]["mean"] for _, row in points]
        ys = [row[OUT_OF_DOMAIN]["mean"] for _, row in points]
        if len(points) == 1 and not points[0][0]:
            axes.plot(xs, ys, "k*", markersize=12, label=family)
            continue
        axes.plot(xs, ys, "o-", label=family)
        for (setting, _), x, y in zip(points, xs, ys):
            axes.annotate(setting, (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=7)
    _axes_labels(record, axes)
    axes.legend(fontsize=8)
    axes.set_title(f"{record['task']}: TRAM's radius_scale against ASAM's ρ, "
                   f"{len(record['seeds'])} seeds ({record['backend']})")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
