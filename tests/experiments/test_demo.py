"""`keras-tram demo` end to end on the current backend, and its one-line errors."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_tram.experiments import pretraining
from keras_tram.experiments.demo import catalog
from keras_tram.experiments.demo import digits
from keras_tram.experiments.demo import intervals
from keras_tram.experiments.demo import lm

SCRIPT = os.path.join(os.path.dirname(sys.executable), "keras-tram")
BACKEND = keras.backend.backend()


def keras_tram(*arguments, cwd):
    assert os.path.exists(SCRIPT), "the keras-tram command is not installed"
    return subprocess.run([SCRIPT, *arguments], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


def _demo_run(folder, *arguments):
    """`keras-tram demo` with 2 seeds on this backend, in `folder` (output `out`,
    cache `cache`); returns `(folder, completed)` once it has exited 0."""
    completed = keras_tram("demo", *arguments, "--seeds", "2", "--backend", BACKEND,
                           "--output", "out", "--cache", "cache", cwd=folder)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return folder, completed


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory):
    return _demo_run(tmp_path_factory.mktemp("demo"), "--methods",
                     "adam,tram-previous_step,tram-previous_step-k5")


def test_demo_writes_every_run(smallest_run):
    folder, completed = smallest_run
    with open(folder / "out" / "digits.json") as file:
        record = json.load(file)
    assert record["backend"] == BACKEND and record["task"] == "digits"
    assert record["methods"] == ["adam", "tram-previous_step", "tram-previous_step-k5"]
    assert record["seeds"] == [0, 1] and len(record["runs"]) == 6
    for run in record["runs"]:
        assert sorted(run["scores"]) == sorted(digits.DOMAINS)
        assert 0 < run["step_seconds"] < run["train_seconds"]
        assert all(0 <= a <= 1 for a in run["scores"].values())
    for run in record["runs"]:
        if run["method"] == "adam":
            assert run["per_epoch"] == {} and run["per_step"] == {}
        else:  # TRAM's radius is its divergence, one mean per epoch
            assert run["per_epoch"]["radius"] == run["per_epoch"]["divergence"]
            assert len(run["per_epoch"]["radius"]) == digits.FINE_TUNE["epochs"]
            # ... and the steps' values average to the epochs' means (with
            # perturbation_every=5, over the full steps: the others are NaN).
            steps = np.array(run["per_step"]["radius"])
            epochs = np.split(steps, digits.FINE_TUNE["epochs"])
            np.testing.assert_allclose([np.nanmean(e) for e in epochs],
                                       run["per_epoch"]["radius"], rtol=1e-3)
            full = np.isfinite(steps)
            every = 5 if run["method"].endswith("-k5") else 1
            np.testing.assert_array_equal(full, np.arange(len(steps)) % every == 0)
            assert all(p >= 0 for p in np.array(run["per_step"]["relative_perturbation"])[full])
        assert sorted(run["sharpness"]) == sorted(run["cka_to_pretrained"]) == sorted(digits.DOMAINS)
        assert all(s >= 0 for s in run["sharpness"].values())
        assert all(0 < c <= 1 for c in run["cka_to_pretrained"].values())
    for method in record["methods"]:
        first, second = (r["scores"] for r in record["runs"] if r["method"] == method)
        assert first != second, f"{method}: both seeds gave the same accuracies"
    _check_summary_and_intervals(record)
    # Fine-tuning moved the network: in-domain accuracy rose over the pre-trained one.
    assert all(r["scores"][digits.IN_DOMAIN] > record["pretrained"][digits.IN_DOMAIN]
               for r in record["runs"])
    _check_files(folder / "out", "digits", record, completed)


def _check_summary_and_intervals(record):
    """The summary's means and sample stds over seeds, and each method's
    paired difference to Adam with its t interval, against NumPy."""
    out_of_domain = lambda r: np.mean([r["scores"][d] for d in record["domains"][1:]])  # noqa: E731
    for method in record["methods"]:
        mine = [r for r in record["runs"] if r["method"] == method]
        summary = record["summary"][method]
        for domain in record["domains"]:
            values = [r["scores"][domain] for r in mine]
            assert summary[domain]["mean"] == pytest.approx(np.mean(values))
            assert summary[domain]["std"] == pytest.approx(np.std(values, ddof=1))
        if method == "adam":
            assert "adam" not in record["comparisons"][method]
            continue
        adam = [r for r in record["runs"] if r["method"] == "adam"]
        differences = np.array([out_of_domain(r) for r in mine]) - [out_of_domain(r) for r in adam]
        paired = record["comparisons"][method]["adam"]["out-of-domain avg"]
        half = 12.7062 * np.std(differences, ddof=1) / np.sqrt(2)  # t(0.975, 1)
        assert paired["mean"] == pytest.approx(differences.mean())
        assert paired["low"] == pytest.approx(differences.mean() - half)
        assert paired["high"] == pytest.approx(differences.mean() + half)
        assert paired["excludes_zero"] == (not paired["low"] <= 0 <= paired["high"])


def _check_files(folder, stem, record, completed):
    with open(folder / f"{stem}.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(record["runs"]) * len(record["domains"])
    for image in (f"{stem}.png", f"{stem}-traces.png", f"{stem}-cost.png"):
        with open(folder / image, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(folder / f"{stem}.md") as file:
        markdown = file.read()
    for method in record["methods"]:
        assert method in completed.stdout and f"`{method}`" in markdown  # the tables
    assert "× Adam step" in markdown
    assert "95% interval" in completed.stdout


def test_demo_reuses_its_cache(smallest_run):
    folder, _ = smallest_run
    arguments = ("demo", "--methods", "adam", "--seeds", "1", "--no-intervals",
                 "--backend", BACKEND, "--output", "again", "--cache", "cache")
    reused = keras_tram(*arguments, cwd=folder)
    assert reused.returncode == 0 and "(cached)" in reused.stdout, reused.stderr[-2000:]
    assert "pre-training" not in reused.stdout
    with open(folder / "again" / "digits.json") as file:
        record = json.load(file)
    assert record["runs"][0]["method"] == "adam" and record["comparisons"] == {}


def test_an_unreadable_digits_cache_is_rebuilt(tmp_path):
    """The cache the demo reads (`digits.pretrained_weights`, as in the run
    above), given a file that is not weights: it says so, trains anew and
    replaces the file with one that loads. (A few examples stand for the
    digits: what is checked is the cache, not the network.)"""
    rng = np.random.default_rng(0)
    data = (rng.uniform(size=(8, digits.IMAGE_SIZE, digits.IMAGE_SIZE, 1)).astype("float32"),
            rng.integers(0, 10, size=8))
    logged = []
    first = digits.pretrained_weights(str(tmp_path), data, log=logged.append)
    (cached,) = os.listdir(tmp_path)
    assert digits.pretrained_weights(str(tmp_path), data, log=logged.append)
    assert logged[-1].endswith("(cached)")
    with open(tmp_path / cached, "wb") as file:
        file.write(b"not a weights file")
    rebuilt = digits.pretrained_weights(str(tmp_path), data, log=logged.append)
    assert any("unreadable" in line and line.endswith("rebuilding") for line in logged)
    assert os.listdir(tmp_path) == [cached]
    for a, b in zip(rebuilt, first):  # trained again from the same seed
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert digits.pretrained_weights(str(tmp_path), data, log=logged.append)
    assert logged[-1].endswith("(cached)")


@pytest.fixture(scope="module")
def smallest_lm_run(tmp_path_factory):
    return _demo_run(tmp_path_factory.mktemp("demo-lm"), "--task", "lm", "--tiny",
                     "--methods", "adam,tram-previous_step-released")


def test_lm_demo_writes_every_run(smallest_lm_run):
    folder, completed = smallest_lm_run
    with open(folder / "out" / "lm.json") as file:
        record = json.load(file)
    assert record["task"] == "lm" and record["metric"] == "perplexity"
    assert record["domains"] == list(lm.DOMAINS) and not record["higher_is_better"]
    assert record["methods"] == ["adam", "tram-previous_step-released"]
    assert record["options"]["tram-previous_step-released"] == {"formulation": "released"}
    assert len(record["runs"]) == 4
    vocabulary = record["protocol"]["pretrain"]["vocabulary_size"]
    for run in record["runs"]:
        assert sorted(run["scores"]) == sorted(lm.DOMAINS)
        # Better than uniform guessing: the network was pre-trained.
        assert all(1 < p < vocabulary for p in run["scores"].values())
        if run["method"] != "adam":
            steps = run["per_step"]
            assert len(steps["radius"]) == lm.SCALES["tiny"].steps
            assert steps["radius"] == steps["divergence"] and steps["radius"][0] == 0
            assert all(p >= 0 for p in steps["relative_perturbation"])
    assert all(1 < p < vocabulary for p in record["pretrained"].values())
    _check_summary_and_intervals(record)
    _check_files(folder / "out", "lm", record, completed)


def test_lm_demo_reuses_its_cache(smallest_lm_run):
    folder, _ = smallest_lm_run
    arguments = ("demo", "--task", "lm", "--tiny", "--methods", "adam", "--seeds", "1",
                 "--no-intervals", "--backend", BACKEND, "--output", "again",
                 "--cache", "cache")
    reused = keras_tram(*arguments, cwd=folder)
    assert reused.returncode == 0 and "(cached)" in reused.stdout, reused.stderr[-2000:]
    assert "pre-training" not in reused.stdout
    (cached,) = os.listdir(folder / "cache")
    assert [name for name in os.listdir(folder / "cache" / cached) if name.endswith(".h5")]
    with open(folder / "again" / "lm.json") as file:
        assert json.load(file)["runs"][0]["method"] == "adam"


def test_an_unreadable_preset_cache_is_rebuilt(tmp_path):
    """The LM task's cache (`pretraining.cached_preset`, as the run above
    reads it), given a preset folder whose weights are not weights: it says
    so, builds anew into a fresh folder renamed into place, and loads that."""
    folder = str(tmp_path / "preset")
    builds, logged = [], []

    def build(target):
        builds.append(target)
        with open(os.path.join(target, "model.weights.h5"), "w") as file:
            file.write(f"build {len(builds)}")

    def load(target):
        with open(os.path.join(target, "model.weights.h5")) as file:
            text = file.read()
        if not text.startswith("build"):
            raise ValueError("not a weights file")
        return text

    assert pretraining.cached_preset(folder, build, load, logged.append) == "build 1"
    assert pretraining.cached_preset(folder, build, load, logged.append) == "build 1"
    assert logged[-1].endswith("(cached)") and len(builds) == 1
    with open(os.path.join(folder, "model.weights.h5"), "w") as file:
        file.write("not a weights file")
    assert pretraining.cached_preset(folder, build, load, logged.append) == "build 2"
    assert any("unreadable (ValueError); rebuilding" in line for line in logged)
    assert builds[-1] == folder + ".partial" and os.listdir(tmp_path) == ["preset"]


@pytest.mark.parametrize("arguments, mentions", [
    (("--backend", "theano"), "--backend"),
    (("--methods", "adam,lamb"), "lamb"),
    (("--methods", "sgd"), "sgd"),
    (("--output", "a-file/out"), "--output"),
    (("--seeds", "0"), "--seeds"),
    (("--seeds", "1"), "--seeds"),  # intervals need two
    (("--task", "poetry"), "--task"),
    (("--tiny",), "--tiny"),  # digits has no tiny run
    (("--sweep", "--methods", "adam"), "--sweep"),
    (("--methods", "sam,sam"), "twice"),
])
def test_demo_bad_arguments_give_one_line_and_exit_code_2(tmp_path, arguments, mentions):
    (tmp_path / "a-file").write_text("")
    completed = keras_tram("demo", "--backend", BACKEND, *arguments, cwd=tmp_path)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0], completed.stderr


def test_t_quantiles_and_paired_intervals_match_scipy():
    from scipy import stats as scipy_stats  # scikit-learn's, in the dev extra
    for df in [*range(1, 40), 50, 100, 1000]:
        assert intervals.t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df),
                                                          abs=1e-4)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5))
    low, high = scipy_stats.t.interval(0.95, 4, loc=np.mean(a - b),
                                       scale=scipy_stats.sem(a - b))
    paired = intervals.paired(a, b)
    assert (paired["low"], paired["high"]) == pytest.approx((low, high), abs=1e-4)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        intervals.paired([1.0], [0.5])


def test_the_catalog_names_only_methods_the_package_has():
    from keras_tram.methods import parse_method

    for name, (method, options) in catalog.METHODS.items():
        parse_method(method)
        assert set(options) <= {"formulation", "perturbation_every"}
        if "perturbation_every" in options:
            assert catalog.full_step_form(name) in catalog.METHODS
    assert set(catalog.QUICK_METHODS) <= set(catalog.METHODS)
    assert set(catalog.BASELINES) <= set(catalog.METHODS)


def test_token_blocks_cut_the_joined_documents_into_next_token_pairs():
    from keras_tram.experiments import pretraining

    blocks = pretraining.token_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 3, separator=0)
    stream = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]  # 12 tokens: 3 blocks of 3 + 1
    np.testing.assert_array_equal(blocks, [stream[0:4], stream[3:7], stream[6:10]])
    x, y = pretraining.lm_inputs(blocks)
    np.testing.assert_array_equal(x["token_ids"][:, 1:], y[:, :-1])
    assert x["padding_mask"].all() and blocks.dtype == np.int32
    with pytest.raises(ValueError, match="fewer than"):
        pretraining.token_blocks([[1, 2]], 8, separator=0)
