"""`keras-tram demo` end to end on the current backend, and its one-line errors."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_tram import demo

SCRIPT = os.path.join(os.path.dirname(sys.executable), "keras-tram")
BACKEND = keras.backend.backend()


def keras_tram(*arguments, cwd):
    assert os.path.exists(SCRIPT), "the keras-tram command is not installed"
    return subprocess.run([SCRIPT, *arguments], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    completed = keras_tram("demo", "--methods", "adam,tram-previous_step", "--seeds", "2",
                           "--backend", BACKEND, "--output", "out", "--cache", "cache",
                           cwd=folder)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return folder, completed


def test_demo_writes_every_run(smallest_run):
    folder, completed = smallest_run
    with open(folder / "out" / "demo.json") as file:
        record = json.load(file)
    assert record["backend"] == BACKEND
    assert record["methods"] == ["adam", "tram-previous_step"] and record["seeds"] == [0, 1]
    assert len(record["runs"]) == 4
    for run in record["runs"]:
        assert sorted(run["accuracy"]) == sorted(demo.DOMAINS)
        assert all(0 <= a <= 1 for a in run["accuracy"].values())
    for run in record["runs"]:
        if run["method"] == "adam":
            assert run["per_epoch"] == {} and run["per_step"] == {}
        else:  # TRAM's radius is its divergence, one mean per epoch
            assert run["per_epoch"]["radius"] == run["per_epoch"]["divergence"]
            assert len(run["per_epoch"]["radius"]) == demo.FINE_TUNE["epochs"]
            # ... and the steps' values average to the epochs' means.
            epochs = np.split(np.array(run["per_step"]["radius"]), demo.FINE_TUNE["epochs"])
            np.testing.assert_allclose([e.mean() for e in epochs], run["per_epoch"]["radius"],
                                       rtol=1e-3)
        assert sorted(run["sharpness"]) == sorted(run["cka_to_pretrained"]) == sorted(demo.DOMAINS)
        assert all(s >= 0 for s in run["sharpness"].values())
        assert all(0 < c <= 1 for c in run["cka_to_pretrained"].values())
    for method in record["methods"]:
        first, second = (r["accuracy"] for r in record["runs"] if r["method"] == method)
        assert first != second, f"{method}: both seeds gave the same accuracies"
        summary = record["summary"][method]
        for domain in demo.DOMAINS:
            values = [r["accuracy"][domain] for r in record["runs"] if r["method"] == method]
            assert summary[domain]["mean"] == pytest.approx(np.mean(values))
            assert summary[domain]["std"] == pytest.approx(np.std(values))
    # Fine-tuning moved the network: in-domain accuracy rose over the pre-trained one.
    assert all(r["accuracy"][demo.IN_DOMAIN] > record["pretrained_accuracy"][demo.IN_DOMAIN]
               for r in record["runs"])
    with open(folder / "out" / "demo.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4 * len(demo.DOMAINS)
    for image in ("demo.png", "demo-traces.png"):
        with open(folder / "out" / image, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    for method in record["methods"]:
        assert method in completed.stdout  # the table


def test_demo_reuses_and_rebuilds_its_cache(smallest_run):
    folder, _ = smallest_run
    arguments = ("demo", "--methods", "adam", "--seeds", "1", "--backend", BACKEND,
                 "--output", "again", "--cache", "cache")
    reused = keras_tram(*arguments, cwd=folder)
    assert reused.returncode == 0 and "(cached)" in reused.stdout, reused.stderr[-2000:]
    (cached,) = os.listdir(folder / "cache")
    with open(folder / "cache" / cached, "wb") as file:
        file.write(b"not a weights file")
    rebuilt = keras_tram(*arguments, cwd=folder)
    assert rebuilt.returncode == 0 and "rebuilding" in rebuilt.stdout, rebuilt.stderr[-2000:]
    with open(folder / "again" / "demo.json") as file:
        assert json.load(file)["runs"][0]["method"] == "adam"


@pytest.mark.parametrize("arguments, mentions", [
    (("--backend", "theano"), "--backend"),
    (("--methods", "adam,lamb"), "lamb"),
    (("--methods", "sgd"), "sgd"),
    (("--output", "a-file/out"), "--output"),
    (("--seeds", "0"), "--seeds"),
])
def test_demo_bad_arguments_give_one_line_and_exit_code_2(tmp_path, arguments, mentions):
    (tmp_path / "a-file").write_text("")
    completed = keras_tram("demo", "--backend", BACKEND, *arguments, cwd=tmp_path)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0], completed.stderr
