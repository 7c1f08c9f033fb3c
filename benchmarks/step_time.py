"""Per-step time and memory of every method, and of the peers, per backend.

    python benchmarks/step_time.py [--readme README.md] [--section step-time]
        [--backends tensorflow,jax,torch]
        [--models mlp,conv,transformer] [--methods sam,tram-previous_step,...]
        [--steps 30] [--repeats 5] [--jit-compile auto|true|false] [--no-peers]

Each (backend, model) pair runs in its own process. There, plain `fit`, every
method and the backend's peers (see `peers.py`) train the same model on the
same data after a warm-up that compiles their step; they then take turns for
`--repeats` epochs of `--steps` batches and each keeps its fastest epoch, so a
burst of load on the machine does not land on one of them only. An epoch's
time per step runs from the end of its first step to the end of its last, so
that `fit`'s per-epoch setup is left out.

Memory, per method: `state` is what the trainer keeps between steps (weights,
optimizer slots, the method's own copies), in copies of the trainable weights;
`step` is the peak resident memory an epoch adds over the memory before it
(from a second process per pair, run after all the timed ones, with glibc's
mmap threshold lowered so that freed buffers leave the process; Linux only).

The Markdown tables go to `--output` (default `benchmarks/results/results.md`) and,
with `--readme`, replace the part of that file between the two
`<!-- step-time -->` markers (`<!-- SECTION -->` with `--section`).

`<method>/k5` and `<method>/k10` are the method with `perturbation_every=5`
or 10 (LookSAM's reuse): their time per step is the mean over full and reuse
steps, the cost a run pays.
"""

import argparse
import concurrent.futures
import gc
import json
import os
import platform
import re
import subprocess
import sys

import models
import peers

# name -> (keras_tram class, its arguments); "plain" is the bare model.
METHODS = {
    "plain": (None, {}),
    "sam": ("SAM", {"rho": 0.05}),
    "asam": ("ASAM", {"rho": 0.5}),
    "fsam": ("FSAM", {}),
    "gsam": ("GSAM", {}),
    "tram-previous_step": ("TRAM", {"variant": "previous_step"}),
    "tram-pretrained": ("TRAM", {"variant": "pretrained"}),
    "tram-input_noise": ("TRAM", {"variant": "input_noise"}),
    "tram-fisher": ("TRAMFisher", {}),
    # d measured on a quarter of the batch (`divergence_batch_fraction`).
    "tram-previous_step/4": ("TRAM", {"variant": "previous_step",
                                       "divergence_batch_fraction": 0.25}),
    "tram-pretrained/4": ("TRAM", {"variant": "pretrained", "divergence_batch_fraction": 0.25}),
    "tram-input_noise/4": ("TRAM", {"variant": "input_noise",
                                     "divergence_batch_fraction": 0.25}),
    "trpo": ("TRPO", {}),
    "r3f": ("R3F", {}),
    "mesa": ("MESA", {}),
}
# LookSAM's reuse: the full step every k updates (`perturbation_every`).
REUSED = ("sam", "asam", "tram-previous_step", "tram-pretrained", "tram-input_noise",
          "tram-fisher")
METHODS.update({
    f"{name}/k{every}": (METHODS[name][0], {**METHODS[name][1], "perturbation_every": every})
    for every in (5, 10) for name in REUSED
})
# Methods that noise the inputs: on token ids, the noise goes on the embedding.
NOISE_METHODS = {"tram-input_noise", "tram-input_noise/4", "tram-input_noise/k5",
                 "tram-input_noise/k10", "r3f"}
PEERS = {"tensorflow": "tf_keras", "jax": "optax", "torch": "torch loop"}
MARKER = "<!-- {} -->"


def _trainer(keras, method, model_name, jit_compile):
    import keras_tram  # in the worker, after KERAS_BACKEND is set

    keras.utils.set_random_seed(0)
    model = models.build(model_name, keras)
    name, arguments = METHODS[method]
    noise_layer = models.SPECS[model_name][3]
    if method in NOISE_METHODS and noise_layer:
        arguments = dict(arguments, noise_layer=noise_layer)
    trainer = model if name is None else getattr(keras_tram, name)(model, **arguments)
    trainer.compile(
        optimizer=keras.optimizers.Adam(peers.LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return trainer, model


class _Fit:
    """A keras-tram trainer (or the plain model) seen as a peer is."""

    def __init__(self, trainer, model, x, y, batch):
        import keras

        self.trainer, self.model, self.x, self.y, self.batch = trainer, model, x, y, batch
        self.timer = peers.step_timer(keras.callbacks.Callback)

    def epoch(self):
        self.trainer.fit(self.x, self.y, batch_size=self.batch, epochs=1, verbose=0,
                         shuffle=False, callbacks=[self.timer])
        return self.timer.seconds()

    def state_bytes(self):
        return peers.nbytes(self.trainer.weights + self.trainer.optimizer.variables)


def _runners(backend, model_name, methods, steps, jit_compile, with_peers):
    import keras

    x, y = models.data(model_name, steps)
    batch = models.SPECS[model_name][0]
    # Plain `fit` and the peers compile as keras-tram's methods do.
    jit_compile = _trainer(keras, "sam", model_name, jit_compile)[0].jit_compile
    runners = {}
    for method in methods:
        trainer, model = _trainer(keras, method, model_name, jit_compile)
        runners[method] = _Fit(trainer, model, x, y, batch)
        warmup = min(3, steps)  # compiles the step and builds the optimizer
        trainer.fit(x[: batch * warmup], y[: batch * warmup], batch_size=batch, verbose=0)
    failures = {}
    if with_peers:
        for sam in (False, True):
            name = f"{PEERS[backend]} {'SAM' if sam else 'plain'}"
            keras.utils.set_random_seed(0)
            try:
                runner = peers.build(backend, model_name, models.build(model_name, keras), x, y,
                                     sam, jit_compile)
                runner.epoch()  # compiles
                runners[name] = runner
            except Exception as error:  # a peer that cannot train this model is reported
                last = [line for line in str(error).splitlines() if line.strip()][-1:]
                message = re.sub(r" at 0x[0-9a-f]+", "", " ".join(last).strip())
                kind = type(error).__name__
                failures[name] = message if message.startswith(kind) else f"{kind}: {message}"
    weights = peers.nbytes(runners["plain"].model.trainable_weights)
    return runners, weights, failures


def _status_kb(field):
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def _peak_added_mb(run):
    """Peak resident memory `run()` adds over the memory before it, in MB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    run()
    return (_status_kb("VmHWM") - before) / 1024


def measure_time(backend, model_name, methods, steps, repeats, jit_compile, with_peers):
    runners, weights, failures = _runners(backend, model_name, methods, steps, jit_compile,
                                          with_peers)
    times = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            times[name] = min(times[name], runner.epoch())
    state = {name: runner.state_bytes() / weights for name, runner in runners.items()}
    jit = runners["plain"].trainer.jit_compile
    return {"seconds": times, "state": state, "jit_compile": jit, "failures": failures}


def measure_memory(backend, model_name, methods, steps, jit_compile, with_peers):
    runners, _, _ = _runners(backend, model_name, methods, steps, jit_compile, with_peers)
    return {"step_mb": {name: _peak_added_mb(runner.epoch) for name, runner in runners.items()}}


def _jit_compile(setting, backend):
    """The `jit_compile` that `--jit-compile` gives `backend`."""
    chosen = dict(part.split("=") if "=" in part else (backend, part)
                  for part in setting.split(","))
    return {"auto": "auto", "true": True, "false": False}[chosen.get(backend, "auto")]


def _worker(args, methods):
    backend = os.environ["KERAS_BACKEND"]
    jit = _jit_compile(args.jit_compile, backend)
    if args.worker == "time":
        result = measure_time(backend, args.models, methods, args.steps, args.repeats, jit,
                              not args.no_peers)
    else:  # the peak of a step does not grow with the number of steps
        result = measure_memory(backend, args.models, methods, min(args.steps, 5), jit,
                                not args.no_peers)
    print("RESULT " + json.dumps(result))


def _run_worker(kind, backend, model_name, methods, args):
    environment = dict(os.environ, KERAS_BACKEND=backend)
    if kind == "memory":  # every buffer of 64 kB or more is returned to the system
        environment.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    command = [sys.executable, __file__, "--worker", kind, "--models", model_name,
               "--methods", ",".join(methods), "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--jit-compile", args.jit_compile]
    completed = subprocess.run(command + ["--no-peers"] * args.no_peers, env=environment,
                               capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        sys.exit(f"{backend} {model_name} ({kind}) failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def _machine():
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = re.search(r"^model name\s*:\s*(.*)$", cpuinfo.read(), re.MULTILINE)
    cores = len(os.sched_getaffinity(0))
    return f"{cpu.group(1) if cpu else platform.processor()}, {cores} cores"


def _versions(backends):
    from importlib.metadata import version

    packages = ["keras"] + [{"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[b]
                            for b in backends]
    return ", ".join(f"{p} {version(p)}" for p in packages)


def markdown(results, command, backends, model_names):
    """The tables of `results[backend][model]`, with the command and machine."""
    lines = [(
        f"`{command}` on {_machine()} ({_versions(backends)}). Time: milliseconds per step "
        "(fastest epoch), ratio to the plain step and to SAM of the same run. For the peer "
        "rows, `× plain` is over the peer's own plain step and `× SAM` over keras-tram's SAM. "
        "Memory: `state` is what is kept between steps, in copies of the trainable weights "
        "(Adam alone: 3); `step MB` is the peak an epoch adds to the process."
    )]
    for backend in backends:
        runs = results[backend]
        jit = runs[model_names[0]]["jit_compile"]
        lines += ["", f"**{backend}** (`jit_compile={jit}`)", ""]
        header = "| method |" + "".join(
            f" {m} ms | × plain | × SAM | state | step MB |" for m in model_names)
        lines += [header, "|---|" + "---:|" * 5 * len(model_names)]
        peer = PEERS[backend]
        names = list(runs[model_names[0]]["seconds"])
        names += [n for r in runs.values() for n in r["failures"] if n not in names]
        notes = []
        for name in names:
            cells = []
            for model_name in model_names:
                run = runs[model_name]
                seconds = run["seconds"]
                if name in run["failures"]:
                    cells += ["fails¹"] + ["—"] * 4
                    notes.append(f"¹ {name} on {model_name}: {run['failures'][name][:160]}")
                    continue
                plain = seconds[f"{peer} plain"] if name.startswith(peer) else seconds["plain"]
                cells += [f"{seconds[name] * 1e3:.2f}", f"{seconds[name] / plain:.2f}",
                          f"{seconds[name] / seconds['sam']:.2f}", f"{run['state'][name]:.1f}",
                          f"{max(run['step_mb'][name], 0):.0f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [""] + notes if notes else []
    return "\n".join(lines) + "\n"


def _splice(path, table, section):
    marker = MARKER.format(section)
    with open(path) as handle:
        text = handle.read()
    parts = text.split(marker)
    if len(parts) != 3:
        sys.exit(f"{path} must contain exactly two {marker} markers")
    with open(path, "w") as handle:
        handle.write(parts[0] + marker + "\n" + table + marker + parts[2])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--models", default=",".join(models.SPECS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit-compile", default="auto",
                        help="auto, true or false, for every backend or per backend "
                             "(tensorflow=true,jax=auto)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--memory-jobs", type=int, default=2,
                        help="memory runs at a time (after every timed run)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "results.md"))
    parser.add_argument("--readme", help="a file whose step-time part is replaced")
    parser.add_argument("--section", default="step-time",
                        help="the part of --readme to replace: between two "
                             "<!-- SECTION --> markers")
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = ["plain", "sam"] + [m for m in args.methods.split(",") if m not in ("plain", "sam")]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {sorted(METHODS)}")
    if args.worker:
        return _worker(args, methods)
    try:
        [_jit_compile(args.jit_compile, b) for b in ("tensorflow", "jax", "torch")]
    except (KeyError, ValueError):
        parser.error(f"--jit-compile {args.jit_compile!r}: use auto, true or false, "
                     "alone or as backend=value pairs")

    backends, model_names = args.backends.split(","), args.models.split(",")
    unknown = sorted(set(model_names) - set(models.SPECS))
    if unknown:
        parser.error(f"unknown --models {unknown}; choose from {sorted(models.SPECS)}")
    pairs = [(backend, model_name) for backend in backends for model_name in model_names]
    results = {backend: {} for backend in backends}
    for backend, model_name in pairs:  # one at a time: the machine is the timer's
        run = results[backend][model_name] = _run_worker("time", backend, model_name, methods,
                                                         args)
        print(f"{backend} {model_name}: " + ", ".join(
            f"{name} {seconds * 1e3:.2f} ms" for name, seconds in run["seconds"].items()),
            flush=True)
    # Memory does not depend on the load: these runs share the machine.
    with concurrent.futures.ThreadPoolExecutor(args.memory_jobs) as pool:
        memory = pool.map(lambda pair: _run_worker("memory", *pair, methods, args), pairs)
        for (backend, model_name), run in zip(pairs, memory):
            results[backend][model_name].update(run)
    command = "python benchmarks/step_time.py " + " ".join(sys.argv[1:])
    table = markdown(results, command.strip(), backends, model_names)
    print("\n" + table)
    with open(args.output, "w") as handle:
        handle.write(table)
    with open(args.output.replace(".md", ".json"), "w") as handle:
        json.dump(results, handle, indent=1)
    if args.readme:
        _splice(args.readme, table, args.section)


if __name__ == "__main__":
    main()
