"""The demo's protocol, whatever the task: every method with every seed on the
same pre-trained network, then means, paired differences and the outputs.

A task (`keras_tram.experiments.demo.digits.Digits`,
`keras_tram.experiments.demo.lm.LanguageModelling`)
has `name`, `metric`, `higher_is_better`, `domains` (the in-domain one first),
`protocol` (a dict for the record), `prepare(cache, log)` (data and the
pre-trained network, cached), `pretrained_scores()` and
`fine_tune(method, options, seed)`, which returns a dict with `scores`
(`{domain: value}`), `per_epoch`, `per_step` and `train_seconds`, and may add
measures of its own.
"""

import time

import keras
import numpy as np

from keras_tram.experiments.demo import catalog
from keras_tram.experiments.demo import intervals
from keras_tram.experiments.demo import report

OUT_OF_DOMAIN = "out-of-domain avg"
# Step statistics summarised per method (means over the steps of each run).
STEP_STATISTICS = ("radius", "divergence", "relative_perturbation")


def methods_named(names):
    """`(label, method, options)` for names of `catalog.METHODS`."""
    unknown = [n for n in names if n not in catalog.METHODS]
    if unknown:
        raise ValueError(f"`methods` must be among {tuple(catalog.METHODS)}; got {unknown}.")
    return [(name, *catalog.METHODS[name]) for name in names]


def run(task, methods, seeds, output, cache, intervals=True, kind="demo", log=print):
    """Runs every method with every seed; writes and returns the record.

    Args:
        task: the task object.
        methods: `(label, method, options)` triples (`methods_named`).
        seeds: the seeds, the same for every method.
        output: the folder for `<task>[-sweep].{json,csv,md,png}`.
        cache: the folder of the pre-trained networks.
        intervals: whether to compute paired differences with 95%
            intervals (needs at least 2 seeds).
        kind: `"demo"`, or `"sweep"` for the radius sweep.
    """
    seeds = list(seeds)
    if intervals and len(seeds) < 2:
        raise ValueError(
            f"`seeds`: a confidence interval needs at least 2 seeds; got {len(seeds)}. "
            "Use more seeds, or turn the intervals off."
        )
    labels = [label for label, _, _ in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`methods` names a method twice: {labels}.")
    started = time.time()
    task.prepare(cache, log)
    before = task.pretrained_scores()
    runs, total = [], len(methods) * len(seeds)
    for label, method, options in methods:
        for seed in seeds:
            began = time.time()
            result = task.fine_tune(method, options, seed)
            runs.append({"method": label, "seed": seed, **result,
                         "seconds": round(time.time() - began, 2)})
            log(_progress(runs, total, task))
    record = {
        "task": task.name, "kind": kind, "metric": task.metric,
        "higher_is_better": task.higher_is_better, "domains": list(task.domains),
        "protocol": task.protocol,
        "backend": keras.backend.backend(), "keras": keras.__version__,
        "methods": labels, "options": {label: options for label, _, options in methods},
        "seeds": seeds, "pretrained": before, "runs": runs,
    }
    record["summary"] = summarize(record)
    record["comparisons"] = compare(record) if intervals else {}
    record["seconds"] = round(time.time() - started, 1)
    files = report.write(record, output)
    log(report.text(record))
    log(f"wrote {', '.join(files)}")
    return record


def _progress(runs, total, task):
    """One line per run: which, how long, about how long is left, its scores."""
    done, last = len(runs), runs[-1]
    left = np.mean([r["seconds"] for r in runs]) * (total - done)
    scores = ", ".join(f"{d} {v:.{report.digits(task.metric)}f}"
                       for d, v in last["scores"].items())
    return (f"[{done:>{len(str(total))}}/{total}] {last['method']} seed {last['seed']} "
            f"({last['seconds']:.1f} s, ~{left / 60:.1f} min left): {scores}")


def columns(record):
    """The score columns: each domain, then the mean of the out-of-domain ones."""
    return [*record["domains"], OUT_OF_DOMAIN]


def scores(run, record):
    """A run's value in each of `columns(record)`."""
    values = dict(run["scores"])
    values[OUT_OF_DOMAIN] = float(np.mean([run["scores"][d] for d in record["domains"][1:]]))
    return values


def _step_mean(run, name):
    steps = [v for v in run["per_step"].get(name, []) if np.isfinite(v)]
    return float(np.mean(steps)) if steps else None


def summarize(record):
    """Per method: mean and std over seeds of every score column, of the step
    statistics' per-run means, of the training time, and of any extra
    per-domain measure of the task (`sharpness`, `cka_to_pretrained`)."""
    summary = {}
    extras = sorted({key for r in record["runs"] for key, value in r.items()
                     if isinstance(value, dict) and key not in ("scores", "per_epoch",
                                                                 "per_step")})
    for method in record["methods"]:
        mine = [r for r in record["runs"] if r["method"] == method]
        row = {c: intervals.mean_std([scores(r, record)[c] for r in mine])
               for c in columns(record)}
        for name in STEP_STATISTICS:
            means = [_step_mean(r, name) for r in mine]
            if all(m is not None for m in means):
                row[name] = intervals.mean_std(means)
        row["train_seconds"] = intervals.mean_std([r["train_seconds"] for r in mine])
        if all(r.get("step_seconds") for r in mine):
            row["step_seconds"] = intervals.mean_std([r["step_seconds"] for r in mine])
        for extra in extras:
            for domain in record["domains"]:
                row[f"{extra} {domain}"] = intervals.mean_std(
                    [r[extra][domain] for r in mine])
        summary[method] = row
    return summary


def compare(record):
    """`{method: {baseline: {column: paired difference}}}`: every method
    against each of `catalog.BASELINES` in the run (plain Adam, SAM, ASAM),
    and a reusing method (`<name>-k5`) against `<name>` (as
    `catalog.FULL_STEP_FORM`)."""
    by = {(r["method"], r["seed"]): scores(r, record) for r in record["runs"]}

    def paired(method, baseline):
        return {
            column: intervals.paired(
                [by[(method, s)][column] for s in record["seeds"]],
                [by[(baseline, s)][column] for s in record["seeds"]],
            )
            for column in columns(record)
        }

    comparisons = {}
    for method in record["methods"]:
        comparisons[method] = {}
        for baseline in catalog.BASELINES:
            if baseline not in record["methods"] or baseline == method:
                continue
            comparisons[method][baseline] = paired(method, baseline)
        base = catalog.full_step_form(method)
        if base in record["methods"]:
            comparisons[method][catalog.FULL_STEP_FORM] = paired(method, base)
    return comparisons
