"""The named methods against NumPy closed forms, and every method through a
`.keras` file and resumed training."""

import json

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import ALL_METHODS
from support import assert_weights
from support import cross_entropy
from support import fit_full_batch
from support import make_data
from support import make_mlp
from support import STEPS


def test_fsam_matches_closed_form():
    model, initial = make_mlp()
    x, y, _ = make_data()
    fit_full_batch(keras_tram.FSAM(model, rho=0.3, eta=2.0), x, y, learning_rate=0.2)
    batches = [(x, y, None)] * STEPS
    expected, _ = reference.train_sgd(
        initial, batches, lambda g, w: reference.fsam_epsilon(g, w, 0.3, 2.0), 0.2
    )
    assert_weights(model, expected)


@pytest.mark.parametrize("method", ["trpo", "mesa"])
def test_penalties_match_closed_form(method):
    model, initial = make_mlp()
    x, y, _ = make_data()
    if method == "trpo":
        wrapped, decay = keras_tram.TRPO(model, weight=2.0), 0.0
    else:
        wrapped, decay = keras_tram.MESA(model, decay=0.5, weight=2.0), 0.5
    history = fit_full_batch(wrapped, x, y)
    expected, divergences = reference.train_penalty(initial, x, y, STEPS, 1.0, 2.0, decay)
    assert divergences[0] == 0 and min(divergences[1:]) > 1e-4
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(
        history["penalty"], 2.0 * np.array(divergences), rtol=2e-3, atol=1e-7
    )
    assert_weights(model, expected)


def test_r3f_with_zero_weight_is_plain_sgd():
    model, initial = make_mlp()
    x, y, _ = make_data()
    fit_full_batch(keras_tram.R3F(model, noise_stddev=0.5, weight=0.0), x, y)
    expected = [np.array(w, np.float64) for w in initial]
    for _ in range(STEPS):
        _, grads = reference.mlp_loss_and_grads(expected, x, y)
        expected = [w - g for w, g in zip(expected, grads)]
    assert_weights(model, expected)


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_keras_file_round_trip_and_resumed_training(name, tmp_path):
    x, y, _ = make_data()
    model, _ = make_mlp(dropout=0.2)
    wrapped = ALL_METHODS[name](model)
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    wrapped.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(wrapped)
    assert json.dumps(loaded.get_config()) == json.dumps(wrapped.get_config())
    for a, b in zip(loaded.non_trainable_variables, wrapped.non_trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    histories = [
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        for m in (wrapped, loaded)
    ]
    assert histories[0] == histories[1]
    for a, b in zip(loaded.model.get_weights(), wrapped.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
