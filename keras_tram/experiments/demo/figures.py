"""The demo's figures, drawn from a run's record: in-domain against
out-of-domain score, cost against benefit, the sweep, and the forest plot of
paired differences to Adam. Point labels sit in a column beside the axes, in
the points' vertical order and at least a line apart, each joined to its
point, so that no two overlap however close the points are."""

from keras_tram.experiments.demo import catalog

OUT_OF_DOMAIN = "out-of-domain avg"
LABEL_SIZE = 7  # points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure, path):
    figure.savefig(path, bbox_inches="tight")
    _pyplot().close(figure)


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


def label_beside(figure, axes, points, colors=None):
    """Writes `{label: (x, y)}` in a column right of `axes`: ordered as the
    points are from bottom to top, at least one line apart, each joined to
    its point by a thin line, in the point's color (`{label: color}`).
    Returns the text artists."""
    figure.canvas.draw()  # the final transforms
    box = axes.get_window_extent()
    line = 1.6 * LABEL_SIZE * figure.dpi / 72.0
    heights = {label: axes.transData.transform(p)[1] for label, p in points.items()}
    order = sorted(points, key=lambda label: heights[label])
    placed = []
    for label in order:  # from the bottom up, pushing up what would collide
        placed.append(max(heights[label], placed[-1] + line) if placed else heights[label])
    if placed and placed[-1] > box.y1:  # then down from the top, where it overflows
        placed[-1] = box.y1
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - line)
    texts = []
    for label, y in zip(order, placed):
        texts.append(axes.annotate(
            label, points[label], xytext=(1.03, (y - box.y0) / box.height),
            textcoords="axes fraction", va="center", fontsize=LABEL_SIZE,
            color=(colors or {}).get(label, "k"),
            annotation_clip=False,
            arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.5, shrinkA=0, shrinkB=3),
        ))
    return texts


def _scatter_figure(record):
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 5), dpi=120)
    points, colors = {}, {}
    for method, row in record["summary"].items():
        x, y = row[record["domains"][0]], row[OUT_OF_DOMAIN]
        drawn = axes.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o",
                              capsize=3, label=method)
        points[method] = (x["mean"], y["mean"])
        colors[method] = drawn[0].get_color()
    _axes_labels(record, axes)
    axes.set_title(f"{record['task']}: fine-tuning, {len(record['seeds'])} seeds "
                   f"({record['backend']})")
    label_beside(figure, axes, points, colors)
    return figure


def plot(record, path):
    """In-domain against out-of-domain score per method, with std error bars."""
    _save(_scatter_figure(record), path)


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


def _cost_figure(record):
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 5), dpi=120)
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
    colors = {}
    for method, (y, below, above) in points.items():
        drawn = axes.errorbar(times[method], y, yerr=[[below], [above]], fmt="o", capsize=3,
                              color="k" if method == "adam" else None)
        colors[method] = drawn[0].get_color()
        base = catalog.full_step_form(method)
        if base in points:
            axes.plot([times[base], times[method]], [points[base][0], y], ":", color="gray")
    axes.set_xlabel(
        "time per step relative to Adam\n(same run; the first step, which compiles, left out)"
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
    axes.set_title(f"{record['task']}: cost against benefit, {len(record['seeds'])} seeds,\n"
                   f"{spread} ({record['backend']})", fontsize=10)
    label_beside(figure, axes, {m: (times[m], p[0]) for m, p in points.items()}, colors)
    return figure


def plot_cost(record, path):
    """Cost against benefit, one point per method: training time relative to
    Adam (same run, same steps) against the out-of-domain score's paired
    difference to Adam with its 95% interval (the mean ± std over seeds
    without intervals); a method and its reusing form (`<name>-k5`) joined."""
    _save(_cost_figure(record), path)


def _sweep_figure(record):
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 5), dpi=120)
    families = {}
    for label, row in record["summary"].items():
        family, _, setting = label.partition(" ")
        families.setdefault(family, []).append((setting, row))
    domain = record["domains"][0]
    points = {}
    for family, members in families.items():
        xs = [row[domain]["mean"] for _, row in members]
        ys = [row[OUT_OF_DOMAIN]["mean"] for _, row in members]
        if len(members) == 1 and not members[0][0]:
            axes.plot(xs, ys, "k*", markersize=12, label=family)
            continue
        axes.plot(xs, ys, "o-", label=family)
        for (setting, _), x, y in zip(members, xs, ys):
            points[f"{family} {setting}"] = (x, y)
    _axes_labels(record, axes)
    axes.legend(fontsize=8)
    axes.set_title(f"{record['task']}: TRAM's radius_scale against ASAM's ρ,\n"
                   f"{len(record['seeds'])} seeds ({record['backend']})")
    label_beside(figure, axes, points)
    return figure


def plot_sweep(record, path):
    """One line per swept method through its grid (each point labelled with
    its setting), and the plain Adam point: how far each must be pushed to
    move the scores."""
    _save(_sweep_figure(record), path)


def forest_figure(records, methods=None):
    """One row of panels per record (task), in domain and out of domain: each
    method's paired difference to Adam with its 95% interval, the methods in
    the same order in every panel, a line at 0, better to the right."""
    pyplot = _pyplot()
    if methods is None:
        methods = [m for m in records[0]["methods"] if m != "adam"]
    figure, axes = pyplot.subplots(
        len(records), 2, figsize=(10, 0.9 + (0.26 * len(methods) + 0.9) * len(records)),
        dpi=120, squeeze=False, sharey=True,
    )
    for row, record in zip(axes, records):
        columns = [record["domains"][0], OUT_OF_DOMAIN]
        for panel, column in zip(row, columns):
            for i, method in enumerate(methods):
                paired = record["comparisons"].get(method, {}).get("adam")
                if paired is None:
                    continue
                value = paired[column]
                color = "C0" if value["excludes_zero"] else "0.55"
                panel.errorbar(value["mean"], i, fmt="o", color=color, markersize=4, capsize=2,
                               xerr=[[value["mean"] - value["low"]],
                                     [value["high"] - value["mean"]]])
            panel.axvline(0.0, color="k", linewidth=0.7)
            if not record["higher_is_better"]:
                panel.invert_xaxis()  # better is to the right in every panel
            place = "in domain" if column != OUT_OF_DOMAIN else "out of domain (mean)"
            panel.set_title(f"{record['task']}: {place}", fontsize=9)
            direction = "lower" if not record["higher_is_better"] else "higher"
            panel.set_xlabel(f"{record['metric']} − Adam's   (better →, {direction})",
                             fontsize=8)
            panel.grid(alpha=0.3, axis="x")
            panel.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(methods)), methods)
    axes[0][0].invert_yaxis()  # the first method on top
    seeds = sorted({len(r["seeds"]) for r in records})
    figure.suptitle(
        "paired difference to Adam, mean and 95% interval over "
        f"{'/'.join(map(str, seeds))} seeds (blue: the interval excludes 0)", fontsize=10,
    )
    figure.tight_layout()
    return figure


def plot_forest(records, path, methods=None):
    """The forest plot (`forest_figure`) of one or several tasks' records."""
    _save(forest_figure(records, methods), path)


def overlapping_texts(figure):
    """The pairs of texts in `figure` whose boxes overlap where one of them is
    a point's label (none, for the figures above): each label's own box
    (without its line to the point) against every other text's."""
    from matplotlib.text import Annotation
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = {id(t): t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()}
    boxes = [(t, Text.get_window_extent(t, renderer)) for t in texts.values()]
    return [
        (a.get_text(), b.get_text())
        for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
        if (isinstance(a, Annotation) or isinstance(b, Annotation)) and box_a.overlaps(box_b)
    ]
