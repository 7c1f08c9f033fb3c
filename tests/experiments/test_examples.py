"""The examples run end to end on the current backend (briefly)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quickstart_runs_and_reports_every_domain():
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart.py"),
         "--epochs", "1", "--methods", "adam,tram-x"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split() for line in completed.stdout.splitlines()]
    table = {row[0]: [float(a) for a in row[1:]] for row in rows if row[0] in ("adam", "tram-x")}
    assert sorted(table) == ["adam", "tram-x"]
    assert all(len(a) == 2 and all(0 <= v <= 1 for v in a) for a in table.values())


def run_tiny(script, tmp_path, *extra):
    """A `--tiny` run of an example with one fine-tuning epoch: the whole
    script on this backend (pre-training included), at a fraction of the
    cost of its 3-8 epochs."""
    output = tmp_path / "table.json"
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), "--tiny", "--epochs", "1",
         "--output", str(output), "--cache", str(tmp_path / "cache"), *extra],
        # A hang guard, not a speed claim: pre-training included, a tiny run
        # takes 2-4 minutes alone on 2 cores, more beside the other backends.
        capture_output=True, text=True, timeout=1500, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(output) as file:
        record = json.load(file)
    assert record["tiny"] and record["backend"] == keras.backend.backend()
    for domain in record["results"]:
        assert domain in completed.stdout  # the printed table
    return record


def test_cross_lingual_tiny(tmp_path):
    record = run_tiny("cross_lingual.py", tmp_path, "--method", "tram",
                      "--variant", "input_noise")
    assert sorted(record["results"]) == sorted(["en", "de", "fr", "es", "ru", "zh"])
    assert all(0 <= a <= 1 for a in record["results"].values())
    others = [a for language, a in record["results"].items() if language != "en"]
    assert record["summary"]["avg (others)"] == pytest.approx(np.mean(others))
    assert "pre-trained" in record["preset"]


def test_cross_dataset_vision_tiny(tmp_path):
    record = run_tiny("cross_dataset_vision.py", tmp_path, "--method", "asam")
    assert sorted(record["results"]) == ["fonts", "mnist (in domain)", "sklearn"]
    assert all(0 <= a <= 1 for a in record["results"].values())


def test_ood_language_modeling_tiny(tmp_path):
    record = run_tiny("ood_language_modeling.py", tmp_path, "--method", "tram-previous_step")
    assert sorted(record["results"]) == ["news (in domain)", "reviews", "wikipedia"]
    # Better than guessing among the 1,000 tokens: the network was pre-trained.
    assert all(1 < p < 1000 for p in record["results"].values())
    assert "pre-trained" in record["preset"]


def test_examples_reject_an_unknown_method(tmp_path):
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "cross_lingual.py"), "--tiny",
         "--method", "lamb"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert completed.returncode != 0 and "method" in completed.stderr
