"""What the task examples share: arguments, the result table and its JSON."""

import argparse
import json
import os
import tempfile
import time

import keras

import keras_tram


def parser(description, default_preset):
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--preset", default=default_preset,
                           help="a keras-hub preset name or a local preset folder "
                                f"(default {default_preset}; with --tiny: a tiny kind)")
    arguments.add_argument("--method", default="tram",
                           help=f"one of {', '.join(keras_tram.METHODS)} (or tram-<variant>)")
    arguments.add_argument("--variant", default=None,
                           help=f"TRAM's variant: {', '.join(keras_tram.TRAM_VARIANTS)}")
    arguments.add_argument("--epochs", type=int, default=None)
    arguments.add_argument("--batch-size", type=int, default=None,
                           help="default: the paper's recipe")
    arguments.add_argument("--learning-rate", type=float, default=None,
                           help="default: the paper's recipe")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--tiny", action="store_true",
                           help="build a tiny local preset and run end to end offline in "
                                "under two minutes on a CPU")
    arguments.add_argument("--output", default=None,
                           help="where to write the JSON of the table (default: results/)")
    arguments.add_argument("--cache", default=None,
                           help="with --tiny: the folder of the pre-trained tiny networks "
                                "(default: $XDG_CACHE_HOME/keras-tram or ~/.cache/keras-tram)")
    return arguments


def cache_folder(arguments):
    return arguments.cache or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras-tram"
    )


def check_method(arguments):
    try:
        keras_tram.methods.parse_method(arguments.method, arguments.variant)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}")


def tiny_folder(name):
    return os.path.join(tempfile.mkdtemp(prefix="keras-tram-"), name)


def recipe_for(recipe, arguments, steps, warmup_fraction=0.0):
    """The paper's recipe, with the schedule stretched over `steps` steps."""
    changes = {"total_steps": max(steps, 1),
               "warmup_steps": int(warmup_fraction * max(steps, 1))}
    if arguments.batch_size:
        changes["batch_size"] = arguments.batch_size
    if arguments.learning_rate:
        changes["learning_rate"] = arguments.learning_rate
    return recipe.replace(**changes)


def evaluate_domains(model, evaluation, batch_size, metric):
    """`{domain: metric}` of `model` on each domain's `(x, y)` or `x`."""
    results = {}
    for domain, data in evaluation.items():
        data = data if isinstance(data, tuple) and len(data) == 2 else (data,)
        logs = model.evaluate(*data, batch_size=batch_size, verbose=0, return_dict=True)
        results[domain] = float(logs[metric])
    return results


def report(name, arguments, column, rows, summary, started):
    """Prints `rows` ({domain: value}) as a table and writes them as JSON."""
    width = max(len(label) for label in [*rows, *summary, "domain"]) + 2
    print(f"\n{name}: {arguments.method}"
          f"{'-' + arguments.variant if arguments.variant else ''} on {arguments.preset}")
    print(f"{'domain':<{width}}{column}")
    for domain, value in rows.items():
        print(f"{domain:<{width}}{value:.4f}")
    for label, value in summary.items():
        print(f"{label:<{width}}{value:.4f}")
    output = arguments.output or os.path.join("results", f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    record = {
        "example": name, "preset": arguments.preset, "method": arguments.method,
        "variant": arguments.variant, "seed": arguments.seed, "tiny": arguments.tiny,
        "backend": keras.backend.backend(),
        "metric": column, "results": rows, "summary": summary,
        "seconds": round(time.time() - started, 1),
    }
    with open(output, "w") as file:
        json.dump(record, file, indent=2)
    print(f"wrote {output}")
    return record
