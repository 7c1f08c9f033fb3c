"""Per-step time of plain `fit` versus the sharpness-aware methods, per backend.

    python benchmarks/step_time.py [--backends tensorflow,jax,torch] [--steps 50] [--repeats 5]

Each backend runs in its own process. Within it, every method trains the same
MLP (256 -> 512 x 3 -> 10, batch 128, Adam) after a warm-up epoch that
compiles the step; methods then take turns for `--repeats` epochs each and
keep their fastest. The table reports milliseconds per step and the ratio to
the plain step measured in the same run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# name -> (keras_tram class, its arguments); "plain" is the bare model.
METHODS = {
    "plain": (None, {}),
    "sam": ("SAM", {"rho": 0.05}),
    "asam": ("ASAM", {"rho": 0.5}),
    "fsam": ("FSAM", {}),
    "tram-previous_step": ("TRAM", {"variant": "previous_step"}),
    "tram-pretrained": ("TRAM", {"variant": "pretrained"}),
    # d measured on a quarter of the batch (`divergence_batch_fraction`).
    "tram-previous_step/4": ("TRAM", {"variant": "previous_step",
                                       "divergence_batch_fraction": 0.25}),
    "tram-pretrained/4": ("TRAM", {"variant": "pretrained", "divergence_batch_fraction": 0.25}),
    "tram-input_noise/4": ("TRAM", {"variant": "input_noise",
                                     "divergence_batch_fraction": 0.25}),
    "tram-input_noise": ("TRAM", {"variant": "input_noise"}),
    "tram-fisher": ("TRAM", {"variant": "fisher"}),
    "trpo": ("TRPO", {}),
    "r3f": ("R3F", {}),
    "mesa": ("MESA", {}),
}


def _wrap(method, model):
    import keras_tram  # in the worker, after KERAS_BACKEND is set

    name, arguments = METHODS[method]
    return model if name is None else getattr(keras_tram, name)(model, **arguments)


def _model(keras):
    layers = [keras.Input((256,))]
    layers += [keras.layers.Dense(512, activation="relu") for _ in range(3)]
    return keras.Sequential(layers + [keras.layers.Dense(10)])


def measure(methods, steps, jit_compile, repeats):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    batch = 128
    x = rng.normal(size=(batch * steps, 256)).astype("float32")
    y = rng.integers(0, 10, size=batch * steps)
    trainers = {}
    for method in methods:
        keras.utils.set_random_seed(0)
        trainer = _wrap(method, _model(keras))
        trainer.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        warmup = min(10, steps)  # compiles the step
        trainer.fit(x[: batch * warmup], y[: batch * warmup], batch_size=batch, verbose=0)
        trainers[method] = trainer
    # Methods take turns, and each keeps its fastest epoch, so that a burst of
    # load on the machine does not land on one method only.
    times = {method: float("inf") for method in methods}
    for _ in range(repeats):
        for method, trainer in trainers.items():
            start = time.perf_counter()
            trainer.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            times[method] = min(times[method], (time.perf_counter() - start) / steps)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = ["plain", "sam"] + [
        m for m in args.methods.split(",") if m not in ("plain", "sam")
    ]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {sorted(METHODS)}")

    if args.worker:
        jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
        print("RESULT " + json.dumps(measure(methods, args.steps, jit, args.repeats)))
        return

    for backend in args.backends.split(","):
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", "--methods", ",".join(methods),
             "--steps", str(args.steps), "--repeats", str(args.repeats),
             "--jit-compile", args.jit_compile],
            env=dict(os.environ, KERAS_BACKEND=backend),
            capture_output=True, text=True,
        )
        lines = [l for l in completed.stdout.splitlines() if l.startswith("RESULT ")]
        if completed.returncode or not lines:
            print(f"{backend}: failed\n{completed.stderr[-2000:]}")
            continue
        times = json.loads(lines[0][len("RESULT "):])
        print(f"\n{backend} (jit_compile={args.jit_compile})")
        print(f"{'method':<20}{'ms/step':>9}{'x plain':>9}{'x SAM':>8}")
        for method, seconds in times.items():
            print(f"{method:<20}{seconds * 1e3:>9.2f}{seconds / times['plain']:>9.2f}"
                  f"{seconds / times['sam']:>8.2f}")


if __name__ == "__main__":
    main()
