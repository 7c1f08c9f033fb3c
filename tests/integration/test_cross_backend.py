"""The same initial weights and data give the same weights on TF, JAX and torch."""

import json
import os
import subprocess
import sys

import numpy as np

from support import BACKEND

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, HERE)
import cross_backend_run  # noqa: E402


def _run_on(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    completed = subprocess.run(
        [sys.executable, os.path.join(HERE, "cross_backend_run.py")],
        env=env, capture_output=True, text=True, timeout=600, cwd=HERE,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_same_weights_on_every_backend():
    here = cross_backend_run.train()
    for other in sorted({"tensorflow", "jax", "torch"} - {BACKEND}):
        there = _run_on(other)
        assert sorted(here) == sorted(there)
        for method in here:
            assert len(here[method]) == len(there[method])
            for a, b in zip(here[method], there[method]):
                np.testing.assert_allclose(
                    np.array(a), np.array(b), atol=1e-5, rtol=0,
                    err_msg=f"{method}: {BACKEND} vs {other}",
                )
