"""The benchmark scripts that cannot run in full here: the accelerator check
on a machine without one, and the full-size benchmark's arguments."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def test_the_accelerator_check_reports_no_accelerator(tmp_path):
    report = tmp_path / "report.md"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATOR_CHECK_ON_CPU"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "accelerator_check.sh"), str(tmp_path / "wheels"),
         str(report)],
        env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert report.read_text().strip() == "no accelerator"


@pytest.mark.parametrize("arguments, message", [
    (["--models", "gpt3"], "unknown models or methods ['gpt3']"),
    (["--methods", "plain,adamw"], "unknown models or methods ['adamw']"),
])
def test_the_full_size_benchmark_rejects_unknown_names(arguments, message):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "full_size.py"), *arguments],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and message in done.stderr


def test_huge_pages_are_added_to_the_tunables_a_user_set():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import full_size
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    plain = full_size.worker_environment("torch", environ={"A": "1"})
    assert plain["KERAS_BACKEND"] == "torch" and "GLIBC_TUNABLES" not in plain
    assert full_size.worker_environment("jax", True, {})["GLIBC_TUNABLES"] == (
        "glibc.malloc.hugetlb=1")
    mine = full_size.worker_environment("jax", True, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
