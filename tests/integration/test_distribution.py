"""Two virtual CPU devices against one: `tf.distribute.MirroredStrategy` on
TensorFlow, `keras.distribution.DataParallel` and `ModelParallel` on JAX
(Keras distributes neither way on torch, so no test is generated there).

By default the perturbation and the divergence use the global batch, so two
devices give the weights of one; `perturbation_scope="per_replica"` gives each
replica its own perturbation, which is `perturbation_chunks=2` on one device.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from support import BACKEND

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, HERE)

if BACKEND in ("tensorflow", "jax"):
    import distributed_run

    METHOD_NAMES = [m if v is None else f"{m}-{v}" for m, v in distributed_run.METHODS]
    PERTURBING_NAMES = [
        m if v is None else f"{m}-{v}" for m, v in distributed_run.PERTURBING
    ]
    REUSING_NAMES = [
        (m if v is None else f"{m}-{v}") + "-every2" for m, v in distributed_run.REUSING
    ]

    @pytest.fixture(scope="module")
    def runs():
        completed = subprocess.run(
            [sys.executable, os.path.join(HERE, "distributed_run.py")],
            env=dict(os.environ, KERAS_BACKEND=BACKEND),
            capture_output=True, text=True, timeout=900, cwd=HERE,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    def _assert_same_weights(a, b, atol=1e-5):
        for x, y in zip(a["weights"], b["weights"]):
            np.testing.assert_allclose(np.array(x), np.array(y), atol=atol, rtol=0)

    def test_the_runs_use_two_replicas(runs):
        assert runs["replicas"] == 2

    @pytest.mark.parametrize("name", METHOD_NAMES)
    def test_two_devices_give_the_weights_of_one(runs, name):
        one, two = runs[f"{name}/one"], runs[f"{name}/two"]
        _assert_same_weights(one, two)
        assert sorted(one["logs"]) == sorted(two["logs"])
        # The radius and divergence are the global batch's; so is the loss.
        for key in ("loss", "radius", "divergence", "penalty", "skipped_steps"):
            if key in one["logs"]:
                np.testing.assert_allclose(
                    two["logs"][key], one["logs"][key], rtol=1e-4, atol=1e-7, err_msg=key
                )

    if BACKEND == "jax":

        @pytest.mark.parametrize("name", METHOD_NAMES)
        def test_model_parallel_kernels_give_the_weights_of_one_device(runs, name):
            split = runs[f"{name}/model_parallel"]
            assert split["kernel_shard"] == [2, 6]  # half of the (4, 6) kernel
            _assert_same_weights(runs[f"{name}/one"], split)

    @pytest.mark.parametrize("name", PERTURBING_NAMES)
    def test_per_replica_perturbation_is_a_chunk_per_replica(runs, name):
        per_replica, chunks = runs[f"{name}/per_replica"], runs[f"{name}/chunks"]
        _assert_same_weights(per_replica, chunks)
        np.testing.assert_allclose(
            per_replica["logs"]["radius"], chunks["logs"]["radius"], rtol=1e-4, atol=1e-7
        )
        # ... and is another method than the global perturbation.
        one = runs[f"{name}/one"]
        gap = max(
            np.abs(np.array(a) - np.array(b)).max()
            for a, b in zip(chunks["weights"], one["weights"])
        )
        assert gap > 1e-4

    def test_a_non_finite_batch_is_skipped_by_every_replica(runs):
        one, two = runs["nan/one"], runs["nan/two"]
        assert two["logs"]["skipped_steps"] == [1.0, 1.0]
        assert all(np.isfinite(np.array(w)).all() for w in two["weights"])
        _assert_same_weights(one, two)

    @pytest.mark.parametrize("name", REUSING_NAMES)
    def test_reuse_on_two_devices_gives_the_weights_of_one(runs, name):
        """The direction `g_v` comes from the global `g` and `g_s`."""
        one, two = runs[f"{name}/one"], runs[f"{name}/two"]
        _assert_same_weights(one, two)
        np.testing.assert_allclose(two["logs"]["radius"], one["logs"]["radius"],
                                   rtol=1e-4, atol=1e-7)
        # ... and the reuse is another method than the full step every update.
        every_update = runs[name.replace("-every2", "") + "/one"]
        gap = max(
            np.abs(np.array(a) - np.array(b)).max()
            for a, b in zip(one["weights"], every_update["weights"])
        )
        assert gap > 1e-4

    @pytest.mark.parametrize("name", REUSING_NAMES)
    def test_per_replica_reuse_is_a_chunk_per_replica(runs, name):
        """Per replica, `g_v` is the mean of the replicas' own, as it is the
        mean of the chunks' on one device."""
        _assert_same_weights(runs[f"{name}/per_replica"], runs[f"{name}/chunks"])
