"""JAX data parallelism over two processes (`keras.distribution.initialize`,
one CPU device each, `DataParallel`) gives the weights of one device on the
same global batches, for every method. Runs `multi_process_run.py`."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from support import BACKEND

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
SCRIPT = os.path.join(HERE, "multi_process_run.py")
sys.path.insert(0, HERE)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(*arguments):
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, SCRIPT, *map(str, arguments)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


if BACKEND == "jax":

    @pytest.fixture(scope="module")
    def runs(tmp_path_factory):
        folder = tmp_path_factory.mktemp("multi_process")
        port = _free_port()
        processes = [
            _start(1, port, folder / "p1.json"),
            _start(0, port, folder / "p0.json"),
            _start("one", folder / "one.json"),
        ]
        try:
            outputs = [p.communicate(timeout=600)[0] for p in processes]
        finally:
            for p in processes:  # stops by itself, even when one process hangs
                if p.poll() is None:
                    p.kill()
        for p, output in zip(processes, outputs):
            assert p.returncode == 0, output[-3000:]
        with open(folder / "p0.json") as f, open(folder / "one.json") as g:
            return json.load(f), json.load(g)

    def test_two_processes_took_part(runs):
        assert runs[0]["processes"] == 2

    import multi_process_run  # noqa: E402  (its names, for the parameters)

    @pytest.mark.parametrize("name", [multi_process_run.name_of(m, o)
                                      for m, o in multi_process_run.METHODS])
    def test_two_processes_give_the_weights_of_one_device(runs, name):
        two, one = runs[0][name], runs[1][name]
        for a, b in zip(two, one):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=2e-6, rtol=1e-5)
