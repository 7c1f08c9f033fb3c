"""Seconds per step and peak memory of every method on full-size keras-hub models.

    python benchmarks/full_size.py --backend jax --models gpt2,xlmr [--lora]
        [--methods plain,sam,...] [--repeats 2] [--steps 2] [--batch 1x8]
        [--dtype-policy mixed_bfloat16] [--huge-pages] [--output results]
        [--readme FILE]

The models are built from keras-hub classes with the architecture numbers of
the presets `gpt2_base_en` (124M weights), `xlm_roberta_base_multi` (278M,
with a 3-class head) and `vit_base_patch16_224_imagenet` (86M, with a
10-class head), with random weights: nothing is downloaded. Each method runs
in a process of its own, so that its peak memory is its own; the processes of
the methods take turns (`--repeats` rounds, the order reversed every other
round) and each method keeps its fastest round. A process times `--steps`
steps after the first (which compiles) and keeps the fastest.

Memory: `peak MB` is the process's peak resident memory (peak device memory
on an accelerator) minus its resident memory before the first step (the
model, its weights and the libraries); `over plain` is that peak less the
plain step's, in copies of the trainable weights (float32).

`--huge-pages` runs every process with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
(glibc >= 2.35, Linux with transparent huge pages in `madvise` mode): the
buffers of a step, hundreds of MB each at this size, are then faulted in 2 MB
pages rather than 4 kB ones. On a CPU at a small batch much of a step is the
kernel faulting in the fresh pages of those buffers (system time), and a
sharpness-aware step makes more of them than a plain one; see docs/cost.md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# name -> (keras-hub architecture, the batch the table uses, the input it takes)
MODELS = {
    "gpt2": "GPT-2 base (124M)",
    "xlmr": "XLM-R base + 3-class head (278M)",
    "vit": "ViT-B/16 + 10-class head (86M)",
}
DEFAULT_BATCH = {"gpt2": (1, 8), "xlmr": (1, 8), "vit": (2, 224)}
METHODS = {
    "plain": ("adam", {}),
    "sam": ("sam", {}),
    "asam": ("asam", {}),
    "tram-previous_step": ("tram-previous_step", {}),
    "tram-pretrained": ("tram-pretrained", {}),
    "tram-input_noise": ("tram-input_noise", {}),
    "tram-fisher": ("tram-fisher", {}),
    "mesa": ("mesa", {}),
}
LORA_RANK = 4


def build(name, lora):
    """The task `name` with random weights, and a batch maker."""
    import keras_hub

    hub = keras_hub.models
    if name == "gpt2":
        backbone = hub.GPT2Backbone(
            vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
            intermediate_dim=3072, max_sequence_length=1024,
        )
        task = hub.GPT2CausalLM(backbone, preprocessor=None)
    elif name == "xlmr":
        backbone = hub.XLMRobertaBackbone(
            vocabulary_size=250002, num_layers=12, num_heads=12, hidden_dim=768,
            intermediate_dim=3072, max_sequence_length=512,
        )
        task = hub.XLMRobertaTextClassifier(backbone, 3, preprocessor=None)
    else:
        backbone = hub.ViTBackbone(
            image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12,
            hidden_dim=768, mlp_dim=3072,
        )
        task = hub.ViTImageClassifier(backbone, 10, preprocessor=None)
    if lora:
        backbone.enable_lora(LORA_RANK)
    return task


def batch(name, size, length, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if name == "vit":
        x = rng.uniform(-1, 1, (size, length, length, 3)).astype("float32")
        return x, np.arange(size) % 10, None
    vocabulary = 50257 if name == "gpt2" else 250002
    tokens = rng.integers(5, vocabulary, (size, length)).astype("int32")
    x = {"token_ids": tokens, "padding_mask": np.ones((size, length), "int32")}
    if name == "gpt2":  # next-token labels, every position counted
        return x, np.roll(tokens, -1, axis=1), np.ones((size, length), "float32")
    return x, np.arange(size) % 3, None


def _resident_mb():
    """Current resident memory of this process, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_resident_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_memory(backend):
    """`(reset, peak MB)` for an accelerator's memory, or None on a CPU."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.reset_peak_memory_stats, lambda: torch.cuda.max_memory_allocated() / 2**20
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = lambda: device.memory_stats() or {}  # noqa: E731
            return (lambda: None), lambda: stats().get("peak_bytes_in_use", 0) / 2**20
    return None


def worker(options):
    """One method on one model in this process: prints a JSON result."""
    import keras
    import numpy as np

    import keras_tram

    if options["dtype_policy"]:
        keras.mixed_precision.set_global_policy(options["dtype_policy"])
    keras.utils.set_random_seed(0)
    name, (size, length) = options["model"], options["batch"]
    task = build(name, options["lora"])
    method, arguments = METHODS[options["method"]]
    wrapped = keras_tram.wrap(task, method, **arguments)
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-5),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, sample_weight = batch(name, size, length)
    trainable = sum(int(np.prod(v.shape)) for v in task.trainable_variables)
    device = _device_memory(keras.backend.backend())
    before = _resident_mb()
    times = []
    for index in range(options["steps"] + 1):
        if index == 1 and device:
            device[0]()
        start = time.perf_counter()
        logs = wrapped.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        float(logs["loss"])  # waits for the step
        times.append(time.perf_counter() - start)
    peak = device[1]() if device else _peak_resident_mb() - before
    print("RESULT " + json.dumps({
        "seconds": min(times[1:]), "first": times[0], "peak_mb": peak,
        "trainable": trainable, "weights": sum(int(np.prod(v.shape)) for v in task.weights),
        "loss": float(logs["loss"]),
    }))


HUGE_PAGES = "glibc.malloc.hugetlb=1"


def worker_environment(backend, huge_pages=False, environ=os.environ):
    """The environment of a worker process: the backend, and with
    `huge_pages` glibc's huge-page tunable added to any the user set."""
    env = {**environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if huge_pages:
        env["GLIBC_TUNABLES"] = ":".join(
            t for t in (env.get("GLIBC_TUNABLES"), HUGE_PAGES) if t
        )
    return env


def run_worker(backend, options, timeout, huge_pages=False):
    env = worker_environment(backend, huge_pages)
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(options)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (process.stdout + process.stderr)[-2000:]
    raise RuntimeError(f"{options['method']} on {options['model']} failed:\n{tail}")


def table(results, backend, models, methods, batches, command, lora):
    import keras

    lines = [
        f"`{command}` on {_machine()} (keras {keras.__version__}, {backend} "
        f"{_version(backend)}). "
        "Seconds per step: the fastest step after the first of the fastest round; ratios to "
        "the plain step and to SAM of the same run; `peak MB`: the peak the steps add to the "
        "process; `over plain`: that peak less plain's, in float32 copies of the trainable "
        "weights.",
        "",
    ]
    for name in models:
        size, length = batches[name]
        shape = f"{size} × {length}" if name != "vit" else f"{size} images of {length}²"
        first = results[name][methods[0]]
        suffix = f", `enable_lora({LORA_RANK})`" if lora else ""
        lines += [
            f"**{MODELS[name]}**{suffix}, batch {shape}: {first['trainable']:,} trainable of "
            f"{first['weights']:,} weights",
            "",
            "| method | s/step | × plain | × SAM | peak MB | over plain |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows = results[name]
        copy_mb = first["trainable"] * 4 / 2**20
        for method in methods:
            row = rows[method]
            ratio = lambda other: (  # noqa: E731
                f"{row['seconds'] / rows[other]['seconds']:.2f}" if other in rows else "–")
            over = (f"{(row['peak_mb'] - rows['plain']['peak_mb']) / copy_mb:.1f}"
                    if "plain" in rows else "–")
            lines.append(f"| {method} | {row['seconds']:.3f} | {ratio('plain')} | "
                         f"{ratio('sam')} | {row['peak_mb']:.0f} | {over} |")
        lines.append("")
    return "\n".join(lines)


def _version(backend):
    from importlib import metadata

    return metadata.version(backend)  # the backends' distributions have their names


def _machine():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0].split(" with ")[0] if names else platform.processor()
    except OSError:
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} cores"


def _splice(path, text, section):
    marker = f"<!-- {section} -->"
    with open(path) as f:
        content = f.read()
    if content.count(marker) != 2:
        raise SystemExit(f"{path} needs two `{marker}` lines around the table")
    head, _, rest = content.partition(marker)
    _, _, tail = rest.partition(marker)
    with open(path, "w") as f:
        f.write(f"{head}{marker}\n{text}\n{marker}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--models", default="gpt2,xlmr,vit")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", default=None,
                        help="SIZExLENGTH for every model (default: 1x8 for text, 2 images)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help=f"enable_lora({LORA_RANK}) first")
    parser.add_argument("--dtype-policy", default=None)
    parser.add_argument("--huge-pages", action="store_true",
                        help=f"run every process with GLIBC_TUNABLES={HUGE_PAGES}")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    parser.add_argument("--readme", help="replace the table between two markers of this file")
    parser.add_argument("--section", default="full-size")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    models, methods = args.models.split(","), args.methods.split(",")
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown models or methods {unknown}; models: {sorted(MODELS)}, "
                     f"methods: {sorted(METHODS)}")
    if args.batch:
        size, length = (int(n) for n in args.batch.lower().split("x"))
        batches = {name: (size, length) for name in models}
    else:
        batches = {name: DEFAULT_BATCH[name] for name in models}
    results = {name: {} for name in models}
    start = time.time()
    for round_index in range(args.repeats):
        order = methods if round_index % 2 == 0 else methods[::-1]
        for name in models:
            for method in order:
                options = dict(model=name, method=method, batch=batches[name],
                               steps=args.steps, lora=args.lora,
                               dtype_policy=args.dtype_policy)
                result = run_worker(args.backend, options, args.timeout, args.huge_pages)
                kept = results[name].get(method)
                if kept is None or result["seconds"] < kept["seconds"]:
                    # The fastest round's time; the peak is the lowest seen.
                    if kept is not None:
                        result["peak_mb"] = min(result["peak_mb"], kept["peak_mb"])
                    results[name][method] = result
                elif result["peak_mb"] < kept["peak_mb"]:
                    kept["peak_mb"] = result["peak_mb"]
                print(f"[{time.time() - start:6.0f} s] round {round_index + 1} {name} "
                      f"{method}: {result['seconds']:.3f} s/step", flush=True)
    given, shown = list(argv if argv is not None else sys.argv[1:]), []
    while given:  # the command as run, without where it wrote its files
        item = given.pop(0)
        if item in ("--output", "--readme"):
            given = given[1:]
        elif not item.startswith(("--output=", "--readme=")):
            shown.append(item)
    command = "python benchmarks/full_size.py " + " ".join(shown)
    text = table(results, args.backend, models, methods, batches, command.strip(), args.lora)
    print(text)
    if args.output:
        with open(args.output + ".md", "w") as f:
            f.write(text + "\n")
        with open(args.output + ".json", "w") as f:
            json.dump({"backend": args.backend, "batches": batches, "results": results}, f,
                      indent=1)
    if args.readme:
        _splice(args.readme, text, args.section)


if __name__ == "__main__":
    main()
