"""Training on two virtual CPU devices, in a process of its own.

The devices must exist before the backend starts, so `test_distribution.py`
runs this script in a subprocess: `python distributed_run.py` on the
TensorFlow (two logical CPU devices, `tf.distribute`) or JAX
(`--xla_force_host_platform_device_count=2`, `keras.distribution`) backend.
It prints `RESULT <json>`: final weights and logs of each run, by name.
"""

import json
import os
import sys

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    )
elif BACKEND == "tensorflow":
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tram  # noqa: E402
import keras_tram._ops.backend  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import cross_entropy  # noqa: E402
from support import make_data  # noqa: E402
from support import make_mlp  # noqa: E402

METHODS = [
    ("sam", None), ("asam", None), ("fsam", None), ("gsam", None),
    ("tram", "previous_step"), ("tram", "pretrained"), ("tram", "input_noise"),
    ("tram", "fisher"), ("trpo", None), ("r3f", None), ("mesa", None),
]
PERTURBING = [(m, v) for m, v in METHODS if m not in ("trpo", "r3f", "mesa")]
# LookSAM's reuse: full steps on updates 0 and 2 of 4, the direction kept between.
REUSING = [("sam", None), ("tram", "previous_step")]
REUSE = {"perturbation_every": 2}
BATCH_SIZE = 8  # global: 4 examples per device


_STRATEGY = []


def two_devices():
    """A context that spreads `fit` over both devices."""
    if BACKEND == "tensorflow":
        # One strategy for the whole process: TensorFlow's collectives fail
        # when a second MirroredStrategy follows a first one that ran
        # (tensorflow/tensorflow#62790).
        if not _STRATEGY:
            _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        return _STRATEGY[0].scope()
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    return _Undistribute()


def model_parallel():
    """JAX: every kernel split over the two devices, along its input axis."""
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"])
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*kernel"] = ("model", None)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    )
    return _Undistribute()


class _Undistribute:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        keras.distribution.set_distribution(None)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def train(method, variant, distributed, data=None, **options):
    """`distributed`: False (one device), True (data parallel) or
    "model_parallel"."""
    keras.utils.set_random_seed(0)
    if distributed == "model_parallel":
        context = model_parallel()
    else:
        context = two_devices() if distributed else _Nothing()
    with context:
        model, _ = make_mlp(hidden=6)  # kernels of 4 and 6 rows: 2 shards each
        wrapped = keras_tram.wrap(model, method, variant, **options)
        # Under a strategy TensorFlow compiles without XLA (Keras's choice); the
        # one-device run does the same, so that the two differ by the devices only.
        jit = {"jit_compile": False} if BACKEND == "tensorflow" else {}
        wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy(), **jit)
        x, y, sample_weight = data if data is not None else make_data(16)
        history = wrapped.fit(
            x, y, sample_weight=sample_weight, batch_size=BATCH_SIZE, epochs=2,
            shuffle=False, verbose=0,
        )
    result = {
        "weights": [keras.ops.convert_to_numpy(w).tolist() for w in model.weights],
        "logs": history.history,
    }
    if distributed == "model_parallel":
        first_kernel = model.weights[0].value
        result["kernel_shard"] = list(first_kernel.addressable_shards[0].data.shape)
    return result


def replicas():
    with two_devices():
        return keras_tram._ops.backend.replica_count() if BACKEND == "jax" else (
            _STRATEGY[0].num_replicas_in_sync
        )


def main():
    results = {"replicas": replicas()}
    for method, variant in METHODS:
        name = method if variant is None else f"{method}-{variant}"
        results[f"{name}/one"] = train(method, variant, distributed=False)
        results[f"{name}/two"] = train(method, variant, distributed=True)
        if BACKEND == "jax":
            results[f"{name}/model_parallel"] = train(method, variant, "model_parallel")
    for method, variant in PERTURBING:
        name = method if variant is None else f"{method}-{variant}"
        results[f"{name}/per_replica"] = train(
            method, variant, distributed=True, perturbation_scope="per_replica"
        )
        results[f"{name}/chunks"] = train(
            method, variant, distributed=False, perturbation_chunks=2
        )
    for method, variant in REUSING:
        name = (method if variant is None else f"{method}-{variant}") + "-every2"
        results[f"{name}/one"] = train(method, variant, False, **REUSE)
        results[f"{name}/two"] = train(method, variant, True, **REUSE)
        results[f"{name}/per_replica"] = train(
            method, variant, True, perturbation_scope="per_replica", **REUSE
        )
        results[f"{name}/chunks"] = train(method, variant, False, perturbation_chunks=2, **REUSE)
    x, y, sample_weight = make_data(16)
    x[9, 0] = np.nan  # one example of each epoch's second batch
    results["nan/one"] = train("tram", "previous_step", False, (x, y, sample_weight))
    results["nan/two"] = train("tram", "previous_step", True, (x, y, sample_weight))
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
