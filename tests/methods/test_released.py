"""`TRAM(formulation="released")` against NumPy closed forms of the authors'
released code."""

import json

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import assert_weights
from support import cross_entropy
from support import EXECUTION_MODES
from support import make_data
from support import make_mlp

STEPS = 4


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_released_tram_matches_closed_form(variant, mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(model, variant=variant, formulation="released",
                              logit_scale=200.0)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.5), loss=cross_entropy(),
                    **EXECUTION_MODES[mode])
    history = wrapped.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False,
                          verbose=0).history
    expected, divergences = reference.train_released_tram(
        initial, x, y, STEPS, 0.5, variant, logit_scale=200.0
    )
    assert divergences[0] == 0 and min(divergences[1:]) > 1e-4
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(history["radius"], divergences, rtol=2e-3, atol=1e-7)
    assert_weights(model, expected)
    paper, _ = reference.train_tram(initial, x, y, STEPS, 0.5, variant, scale=200.0 / 48)
    assert not np.allclose(paper[0], expected[0], atol=1e-4)  # another method


def test_released_input_noise_update_matches_closed_form_given_the_radius():
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(model, variant="input_noise", noise_stddev=0.3,
                              formulation="released", logit_scale=1000.0)
    wrapped.compile(optimizer=keras.optimizers.SGD(1.0), loss=cross_entropy())
    history = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    radius = history.history["radius"][0]
    assert radius > 0
    expected, _ = reference.train_sgd(
        initial, [(x, y, None)], lambda g, w: reference.released_epsilon(g, w, radius), 1.0
    )
    assert_weights(model, expected)


class _Weights(keras.callbacks.Callback):
    """The wrapped model's weights at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append([np.array(w, np.float64) for w in self.model.model.get_weights()])


def test_released_tram_on_padded_sequences_matches_closed_form():
    """Sequence logits `(batch, time, classes)` with a padding mask: the
    released `d` averages over every position, padding included, and its
    perturbation moves every weight by `d · θ² / ‖θ g‖`."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5, 3))
    y = rng.integers(0, 4, size=(6, 5))
    mask = (np.arange(5)[None, :] < rng.integers(2, 6, size=(6, 1))).astype("float64")
    assert 0 < mask.mean() < 1
    initial = [rng.normal(size=(3, 4)), rng.normal(0, 0.3, size=(4,))]
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Dense(4)])
    model.set_weights([w.astype("float32") for w in initial])
    wrapped = keras_tram.TRAM(model, variant="pretrained", formulation="released",
                              logit_scale=2000.0)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.5), loss=cross_entropy())
    weights = _Weights()
    history = wrapped.fit(x.astype("float32"), y, sample_weight=mask.astype("float32"),
                          batch_size=6, epochs=3, shuffle=False, verbose=0,
                          callbacks=[weights]).history
    logits = lambda w: x @ w[0] + w[1]  # noqa: E731
    current = [np.array(w, np.float64) for w in initial]
    expected_d = []
    for _ in range(3):
        d = reference.released_kl(logits(initial), logits(current), logit_scale=2000.0)
        expected_d.append(d)
        _, g = reference.linear_sequence_loss_and_grads(current, x, y, mask)
        eps = reference.released_epsilon(g, current, d)
        _, descent = reference.linear_sequence_loss_and_grads(
            [w + e for w, e in zip(current, eps)], x, y, mask
        )
        current = [w - 0.5 * g for w, g in zip(current, descent)]
    assert expected_d[0] == 0 and expected_d[2] > 1e-3
    np.testing.assert_allclose(history["divergence"], expected_d, rtol=2e-3, atol=1e-7)
    for a, want in zip(weights.epochs[-1], current):
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5)
    # Padding counts: the mean over real tokens only would be another number.
    real_only = reference.kl(
        logits(initial).reshape(-1, 4), logits(weights.epochs[1]).reshape(-1, 4),
        mask.reshape(-1),
    ) * 2000.0 / (4 * 6)
    assert not np.isclose(history["divergence"][2], real_only, rtol=1e-2)


def test_released_config_round_trips_and_saves(tmp_path):
    model, _ = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(model, variant="previous_step", formulation="released",
                              logit_scale=2.0)
    config = wrapped.get_config()
    assert config["formulation"] == "released" and config["logit_scale"] == 2.0
    again = keras_tram.TRAM.from_config(json.loads(json.dumps(config)))
    assert again.formulation == "released"
    assert isinstance(again.geometry, keras_tram.geometry.Released)
    assert again.radius.reduction.logit_scale == 2.0
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    wrapped.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "released.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert json.dumps(loaded.get_config()) == json.dumps(wrapped.get_config())
    # The paper's formulation writes its config as before: no new keys.
    paper = keras_tram.TRAM(make_mlp()[0]).get_config()
    assert "formulation" not in paper and "reduction" not in json.dumps(paper)
    assert keras_tram.TRAM(make_mlp()[0]).formulation == "paper"


@pytest.mark.parametrize("arguments, error, argument", [
    (dict(variant="fisher", formulation="released"), ValueError, "formulation"),
    (dict(formulation="authors"), ValueError, "formulation"),
    (dict(formulation="released", eta=0.01), ValueError, "eta"),
    (dict(logit_scale=2.0), ValueError, "logit_scale"),
    (dict(formulation="released", logit_scale=-1.0), ValueError, "logit_scale"),
    (dict(formulation="released", logit_scale=float("nan")), ValueError, "logit_scale"),
])
def test_released_bad_arguments_raise_clear_errors(arguments, error, argument):
    with pytest.raises(error, match=f"`{argument}`"):
        keras_tram.TRAM(make_mlp()[0], **arguments)
