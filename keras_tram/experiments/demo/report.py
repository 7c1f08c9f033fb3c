"""The demo's outputs: Markdown tables (also what the command prints), JSON,
CSV and the figures (`figures`), all made from the run's record alone."""

import csv
import json
import os

import numpy as np

from keras_tram import analysis
from keras_tram.experiments.demo import catalog
from keras_tram.experiments.demo import figures

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
    times = figures.relative_time(record) if "adam" in record["summary"] else None
    if times:
        per_step = figures.timed_by(record) == "step_seconds"
        header.append("× Adam step" if per_step else "× Adam time")
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
        figures.plot_sweep(record, name + ".png")
        return files
    figures.plot(record, name + ".png")
    if "adam" in record["summary"]:
        figures.plot_cost(record, name + "-cost.png")
        files.append(name + "-cost.png")
    if "adam" in record["summary"] and record["comparisons"]:
        figures.plot_forest([record], name + "-forest.png")
        files.append(name + "-forest.png")
    first = record["seeds"][0]
    traces = {r["method"]: r["per_step"] for r in record["runs"]
              if r["seed"] == first and r["per_step"]}
    if traces:
        analysis.plot_traces(traces, name + "-traces.png")
        files.append(name + "-traces.png")
    return files
