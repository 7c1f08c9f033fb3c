import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras backend: {BACKEND}"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield
    keras.mixed_precision.set_global_policy("float32")


def make_mlp(seed=0, inputs=4, hidden=5, classes=3, l2=0.0, dropout=0.0):
    """The MLP of `reference.py`, with deterministic weights; returns (model, weights)."""
    rng = np.random.default_rng(seed)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    layers = [
        keras.Input((inputs,)),
        keras.layers.Dense(hidden, activation="tanh", kernel_regularizer=regularizer),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=7))
    model = keras.Sequential(layers + [keras.layers.Dense(classes)])
    weights = [
        rng.normal(0, 0.8, (inputs, hidden)),
        rng.normal(0, 0.3, (hidden,)),
        rng.normal(0, 0.8, (hidden, classes)),
        rng.normal(0, 0.3, (classes,)),
    ]
    model.set_weights([w.astype("float32") for w in weights])
    return model, weights


def make_data(n=16, inputs=4, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = rng.integers(0, classes, size=n)
    sample_weight = rng.uniform(0.2, 2.0, size=n).astype("float32")
    return x, y, sample_weight


def cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# Ways to run a compiled step on this backend: (compile kwargs).
if BACKEND == "torch":
    # Keras compiles torch steps only through torch.compile (`jit_compile=True`),
    # which the core does not claim; the default and eager paths are covered.
    EXECUTION_MODES = {"default": {}, "eager": {"run_eagerly": True}}
else:
    EXECUTION_MODES = {
        "graph": {"jit_compile": False},
        "xla": {"jit_compile": True},
        "eager": {"run_eagerly": True},
    }
