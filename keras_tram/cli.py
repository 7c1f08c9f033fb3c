"""The `keras-tram` command.

    keras-tram demo [--task digits|lm] [--quick] [--sweep] [--tiny]
                    [--methods adam,sam,...] [--seeds N] [--no-intervals]
                    [--backend tensorflow|jax|torch] [--output DIR] [--cache DIR]

Also `python -m keras_tram demo ...`. Keras is imported only once the
arguments are checked, with the backend `--backend` chose: the package's
names resolve on first use, and the demo's tasks and methods come from
`keras_tram.experiments.demo.catalog`, a module of plain data.
"""

import argparse
import importlib.util
import os
import sys

from keras_tram.experiments.demo import catalog

BACKENDS = ("tensorflow", "jax", "torch")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"keras-tram: error: {message}\n")


def _parser():
    parser = _Parser(prog="keras-tram", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = commands.add_parser(
        "demo", help="every method fine-tuning a pre-trained network under a real domain "
                     "shift, offline: tables with confidence intervals, and plots",
    )
    demo.add_argument("--task", default="digits",
                      help=f"{' or '.join(catalog.TASKS)}: handwritten -> printed digits "
                           "(a CNN; the default), or Wikipedia -> news language modelling "
                           "(a GPT-2)")
    demo.add_argument("--quick", action="store_true",
                      help=f"{len(catalog.QUICK_METHODS)} methods, {catalog.QUICK_SEEDS} "
                           "seeds (and, for lm, fewer fine-tuning steps): a few minutes on "
                           "a CPU")
    demo.add_argument("--sweep", action="store_true",
                      help="TRAM's radius_scale against ASAM's rho, each over a log grid, "
                           f"{catalog.SWEEP_SEEDS} seeds: one plot of out-of-domain against "
                           "in-domain score")
    demo.add_argument("--tiny", action="store_true",
                      help="--task lm only: a tiny network and a few steps, to check the "
                           "pipeline end to end (its numbers mean nothing)")
    demo.add_argument("--methods", default=None,
                      help="comma-separated; default: all (or the quick five)")
    demo.add_argument("--seeds", type=int, default=None,
                      help=f"seeds per method (default {catalog.SEEDS}; "
                           f"{catalog.QUICK_SEEDS} with --quick, {catalog.SWEEP_SEEDS} "
                           "with --sweep)")
    demo.add_argument("--no-intervals", dest="intervals", action="store_false",
                      help="no paired confidence intervals (allows a single seed)")
    demo.add_argument("--backend", default=None,
                      help="tensorflow, jax or torch (default: KERAS_BACKEND, else the "
                           "first of jax, torch, tensorflow that is installed)")
    demo.add_argument("--output", default="keras-tram-demo",
                      help="folder for <task>.json, .csv, .md and .png (default: "
                           "./keras-tram-demo)")
    demo.add_argument("--cache", default=None,
                      help="folder for the pre-trained networks (default: "
                           "$XDG_CACHE_HOME/keras-tram or ~/.cache/keras-tram)")
    return parser


def _default_backend():
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    for backend in ("jax", "torch", "tensorflow"):
        if importlib.util.find_spec(backend) is not None:
            return backend
    return "tensorflow"


def _check_output(parser, folder):
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".keras-tram-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        parser.error(f"cannot write to --output {folder!r}: {error.strerror or error}")


def _methods(parser, arguments):
    if arguments.methods is None:
        return catalog.QUICK_METHODS if arguments.quick else tuple(catalog.METHODS)
    if arguments.sweep:
        parser.error("--sweep runs its own grid of methods; leave out --methods")
    methods = tuple(catalog.canonical(m) for m in arguments.methods.split(",") if m.strip())
    if not methods:
        parser.error("--methods names no method")
    for method in methods:
        if method not in catalog.METHODS:
            parser.error(f"unknown method {method!r} in --methods; choose from "
                         f"{', '.join(catalog.METHODS)}")
    if len(set(methods)) != len(methods):
        parser.error(f"--methods names a method twice: {','.join(methods)}")
    return methods


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.task not in catalog.TASKS:
        parser.error(f"--task {arguments.task!r} is not one of {', '.join(catalog.TASKS)}")
    if arguments.tiny and arguments.task != "lm":
        parser.error("--tiny applies to --task lm (the digits task is small already)")
    if arguments.quick and arguments.sweep:
        parser.error("--quick and --sweep are different runs; choose one")
    backend = arguments.backend or _default_backend()
    if backend not in BACKENDS:
        parser.error(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(backend) is None:
        parser.error(f"--backend {backend!r} is not installed (pip install keras-tram[{backend}])")
    if arguments.seeds is not None and arguments.seeds < 1:
        parser.error(f"--seeds must be >= 1; got {arguments.seeds}")
    seeds = arguments.seeds or (
        catalog.QUICK_SEEDS if arguments.quick or arguments.tiny
        else catalog.SWEEP_SEEDS if arguments.sweep else catalog.SEEDS)
    if arguments.intervals and seeds < 2:
        parser.error(f"--seeds {seeds}: confidence intervals need at least 2 seeds; give "
                     "more, or pass --no-intervals")
    methods = _methods(parser, arguments)
    _check_output(parser, arguments.output)
    started_with = sys.modules["keras"].backend.backend() if "keras" in sys.modules else None
    if started_with not in (None, backend):
        parser.error(f"Keras is already imported with backend {started_with!r}; "
                     "run keras-tram in a new process")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    from keras_tram.experiments import demo  # imports Keras, with the backend chosen

    cache = arguments.cache or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras-tram"
    )
    demo.run(arguments.task, methods, list(range(seeds)), arguments.output, cache,
             intervals=arguments.intervals, sweep=arguments.sweep, tiny=arguments.tiny,
             quick=arguments.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
