"""Files saved by earlier versions load and resume exactly with today's code."""

import glob
import os
import sys

import keras
import numpy as np
import pytest

from support import BACKEND

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import saved_files  # noqa: E402

GENERATIONS = sorted(glob.glob(os.path.join(saved_files.DATA, "*", BACKEND)))
CASES = [
    (os.path.dirname(generation), name)
    for generation in GENERATIONS
    for name in saved_files.METHODS
    if os.path.exists(os.path.join(generation, f"{name}.keras"))
]


def test_there_are_saved_files_for_this_backend():
    assert len(CASES) >= len(saved_files.METHODS), GENERATIONS


def _expected(generation, name):
    with np.load(os.path.join(saved_files.folder(generation), f"{name}.npz")) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _assert_state(wrapped, expected):
    actual = saved_files.state(wrapped)
    assert len(actual) == len(expected)
    for a, want in zip(actual, expected):
        np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("generation, name", CASES,
                         ids=[f"{os.path.basename(g)}-{n}" for g, n in CASES])
def test_a_saved_keras_file_loads_and_resumes(generation, name):
    loaded = keras.saving.load_model(
        os.path.join(saved_files.folder(generation), f"{name}.keras")
    )
    assert type(loaded) is type(saved_files.fresh(name))
    saved_files.fit(loaded)
    _assert_state(loaded, _expected(generation, name))


@pytest.mark.parametrize("generation, name", CASES,
                         ids=[f"{os.path.basename(g)}-{n}" for g, n in CASES])
def test_a_saved_weights_file_loads_and_resumes(generation, name):
    wrapped = saved_files.fresh(name)
    wrapped.optimizer.build(wrapped.trainable_variables)
    wrapped.load_weights(os.path.join(saved_files.folder(generation), f"{name}.weights.h5"))
    saved_files.fit(wrapped)
    _assert_state(wrapped, _expected(generation, name))
