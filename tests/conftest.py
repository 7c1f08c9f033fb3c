"""Fixtures: every test starts from a fresh Keras state and seed. What the
tests share otherwise is in `support.py`, closed forms in `reference.py`."""

import os
import sys

import keras
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # support.py and reference.py


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield
    keras.mixed_precision.set_global_policy("float32")
