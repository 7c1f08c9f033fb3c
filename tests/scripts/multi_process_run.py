"""JAX data parallelism over two processes: what `test_multi_process.py` runs.

    python tests/scripts/multi_process_run.py PROCESS_ID PORT OUTPUT   # one of 2 processes
    python tests/scripts/multi_process_run.py one OUTPUT               # the one-device run

Each of two processes on localhost has one CPU device;
`keras.distribution.initialize` joins them and `DataParallel` spreads each
global batch of 8 over the two devices, 4 examples fed by each process.
Every method trains two epochs of 16 examples; process 0 writes the weights
as JSON, as does the one-device run on the same global batches.
"""

import json
import os
import sys

METHODS = [
    ("sam", {}), ("asam", {}), ("fsam", {}), ("gsam", {}),
    ("tram-previous_step", {}), ("tram-pretrained", {}), ("tram-input_noise", {}),
    ("tram-fisher", {}), ("trpo", {}), ("r3f", {}), ("mesa", {}),
    ("sam", {"perturbation_every": 2}), ("tram-previous_step", {"perturbation_every": 2}),
]
GLOBAL_BATCH = 8


def name_of(method, options):
    return method + "".join(f"/{k}={v}" for k, v in sorted(options.items()))


def train(method, options, rows, batch_size):
    import keras
    import numpy as np

    import keras_tram

    from support import cross_entropy
    from support import make_data
    from support import make_mlp

    keras.utils.set_random_seed(0)
    model, _ = make_mlp(hidden=6)
    wrapped = keras_tram.wrap(model, method, **options)
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    x, y, sample_weight = make_data(16)
    wrapped.fit(x[rows], y[rows], sample_weight=sample_weight[rows], batch_size=batch_size,
                epochs=2, shuffle=False, verbose=0)
    return [np.asarray(w).tolist() for w in model.get_weights()]


def main():
    # One CPU device per process, collectives between processes through gloo;
    # set before JAX starts.
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split()
        if "force_host_platform_device_count" not in f
    )
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if sys.argv[1] == "one":
        output = sys.argv[2]
        rows = np.arange(16)
        results = {name_of(m, o): train(m, o, rows, GLOBAL_BATCH) for m, o in METHODS}
    else:
        process, port, output = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        keras.distribution.initialize(
            job_addresses=f"localhost:{port}", num_processes=2, process_id=process
        )
        devices = keras.distribution.list_devices()
        assert len(devices) == 2 and jax.local_device_count() == 1, devices
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        )
        # This process's half of every global batch: rows 0-3 of each 8 on
        # process 0, rows 4-7 on process 1.
        half = GLOBAL_BATCH // 2
        rows = np.concatenate([
            np.arange(start + process * half, start + (process + 1) * half)
            for start in range(0, 16, GLOBAL_BATCH)
        ])
        results = {name_of(m, o): train(m, o, rows, half) for m, o in METHODS}
        results["processes"] = jax.process_count()
        if process != 0:
            return
    with open(output, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
