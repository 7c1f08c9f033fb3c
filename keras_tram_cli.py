"""The `keras-tram` command.

    keras-tram demo [--quick] [--methods adam,sam,...] [--seeds N]
                    [--backend tensorflow|jax|torch] [--output DIR] [--cache DIR]

This module lives outside the `keras_tram` package, which imports Keras:
`--backend` has to reach `KERAS_BACKEND` before Keras is first imported.
"""

import argparse
import importlib.util
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# The demo's methods, known here so that bad arguments are caught before
# Keras (and a backend's start-up logging) is imported.
DEMO_METHODS = (
    "adam", "sam", "asam", "fsam", "tram-previous_step", "tram-pretrained",
    "tram-input_noise", "tram-fisher", "r3f", "trpo", "mesa",
)
QUICK_METHODS = ("adam", "sam", "asam", "tram-previous_step", "tram-input_noise")


def canonical(method):
    """A demo method's name as in `DEMO_METHODS` (`"tram"` is TRAM-θ_{t-1})."""
    method = method.strip().lower()
    return "tram-previous_step" if method == "tram" else method


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"keras-tram: error: {message}\n")


def _parser():
    parser = _Parser(prog="keras-tram", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = commands.add_parser(
        "demo", help="every method on a real domain shift (handwritten -> printed digits), "
                     "offline, as a table and a plot",
    )
    demo.add_argument("--quick", action="store_true",
                      help="5 methods, 2 seeds: a few minutes on a CPU")
    demo.add_argument("--methods", default=None,
                      help="comma-separated; default: all (or the quick five)")
    demo.add_argument("--seeds", type=int, default=None,
                      help="seeds per method (default 3; 2 with --quick)")
    demo.add_argument("--backend", default=None,
                      help="tensorflow, jax or torch (default: KERAS_BACKEND, else the "
                           "first of jax, torch, tensorflow that is installed)")
    demo.add_argument("--output", default="keras-tram-demo",
                      help="folder for demo.json, demo.csv and demo.png (default: "
                           "./keras-tram-demo)")
    demo.add_argument("--cache", default=None,
                      help="folder for the pre-trained network (default: "
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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    arguments = parser.parse_args(argv)
    backend = arguments.backend or _default_backend()
    if backend not in BACKENDS:
        parser.error(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(backend) is None:
        parser.error(f"--backend {backend!r} is not installed (pip install keras-tram[{backend}])")
    if arguments.seeds is not None and arguments.seeds < 1:
        parser.error(f"--seeds must be >= 1; got {arguments.seeds}")
    seeds = arguments.seeds or (2 if arguments.quick else 3)
    if arguments.methods:
        methods = tuple(canonical(m) for m in arguments.methods.split(",") if m.strip())
    else:
        methods = QUICK_METHODS if arguments.quick else DEMO_METHODS
    if not methods:
        parser.error("--methods names no method")
    for method in methods:
        if method not in DEMO_METHODS:
            parser.error(f"unknown method {method!r} in --methods; choose from "
                         f"{', '.join(DEMO_METHODS)}")
    _check_output(parser, arguments.output)
    started_with = sys.modules["keras"].backend.backend() if "keras" in sys.modules else None
    if started_with not in (None, backend):
        parser.error(f"Keras is already imported with backend {started_with!r}; "
                     "run keras-tram in a new process")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    from keras_tram import demo  # imports Keras, with the backend chosen

    cache = arguments.cache or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras-tram"
    )
    demo.run(methods, list(range(seeds)), arguments.output, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
