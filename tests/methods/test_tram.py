"""TRAM against NumPy closed forms: its weight references, scaled and capped
radii, padded sequences, and its arguments."""

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import assert_weights
from support import fit_full_batch
from support import make_data
from support import make_mlp
from support import STEPS


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
@pytest.mark.parametrize("scale, max_radius", [(1.0, None), (30.0, None), (30.0, 0.01)])
def test_tram_weight_references_match_closed_form(variant, scale, max_radius):
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = fit_full_batch(
        keras_tram.TRAM(model, variant=variant, radius_scale=scale, max_radius=max_radius),
        x, y,
    )
    expected, divergences = reference.train_tram(
        initial, x, y, STEPS, 1.0, variant, scale, max_radius
    )
    assert divergences[0] == 0 and min(divergences[1:]) > 1e-4
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    radii = np.minimum(scale * np.array(divergences), max_radius or np.inf)
    np.testing.assert_allclose(history["radius"], radii, rtol=2e-3, atol=1e-7)
    assert_weights(model, expected)


def _sequence_model():
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Dense(4)])
    model.set_weights([rng.normal(size=(3, 4)).astype("float32"), np.zeros(4, "float32")])
    return model


def test_padded_positions_change_neither_d_nor_the_update():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5, 3)).astype("float32")
    y = rng.integers(0, 4, size=(6, 5))
    mask = (np.arange(5)[None, :] < rng.integers(2, 6, size=(6, 1))).astype("float32")
    x_other = np.where(mask[..., None] > 0, x, 10 * rng.normal(size=x.shape)).astype("float32")
    results = []
    for inputs in (x, x_other):
        model = _sequence_model()
        history = fit_full_batch(
            keras_tram.TRAM(model, variant="pretrained"), inputs, y, sample_weight=mask
        )
        results.append((history["divergence"], model.get_weights()))
    assert results[0][0][1] > 0
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-9)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


BAD_ARGUMENTS = [
    (lambda m: keras_tram.TRAM(m, variant="theta"), ValueError, "variant"),
    (lambda m: keras_tram.TRAM(m, divergence_batch_fraction=0.0), ValueError,
     "divergence_batch_fraction"),
    (lambda m: keras_tram.TRAM(m, divergence_batch_fraction=1.5), ValueError,
     "divergence_batch_fraction"),
    (lambda m: keras_tram.TRAM(m, variant="fisher", divergence_batch_fraction=0.5),
     ValueError, "divergence_batch_fraction"),
    (lambda m: keras_tram.TRAM(m, variant="input_noise", noise_stddev=-0.1), ValueError, "noise_stddev"),
    (lambda m: keras_tram.TRAM(m, variant="previous_step", noise_stddev=0.1), ValueError, "noise_stddev"),
    (lambda m: keras_tram.TRAM(m, variant="pretrained", rho=0.1), ValueError, "rho"),
    (lambda m: keras_tram.TRAM(m, variant="fisher", max_radius=1.0), ValueError, "max_radius"),
    (lambda m: keras_tram.TRAM(m, divergence="mmd"), ValueError, "divergence"),
    (lambda m: keras_tram.TRAM(m, radius_scale=-1.0), ValueError, "radius_scale"),
    (lambda m: keras_tram.TRAM(m, max_radius=float("nan")), ValueError, "max_radius"),
    (lambda m: keras_tram.TRAM(m, variant="fisher", eta=-1.0), ValueError, "eta"),
    (lambda m: keras_tram.FSAM(m, eta=float("inf")), ValueError, "eta"),
    (lambda m: keras_tram.FSAM(m, rho=-0.1), ValueError, "rho"),
    (lambda m: keras_tram.TRPO(m, weight=-0.1), ValueError, "weight"),
    (lambda m: keras_tram.R3F(m, noise_stddev=float("nan")), ValueError, "noise_stddev"),
    (lambda m: keras_tram.R3F(m, noise_layer=3), TypeError, "noise_layer"),
    (lambda m: keras_tram.MESA(m, decay=1.5), ValueError, "decay"),
    (lambda m: keras_tram.MESA(m, decay=-0.1), ValueError, "decay"),
    (lambda m: keras_tram.MESA(m, divergence="l2"), ValueError, "divergence"),
    (lambda m: keras_tram.TRAM("model"), TypeError, "model"),
    (lambda m: keras_tram.SharpnessAware(m, geometry=keras_tram.geometry.Euclidean()), ValueError, "radius"),
    (lambda m: keras_tram.SharpnessAware(m), ValueError, "penalty"),
    (lambda m: keras_tram.radius.TrustRegion("previous"), TypeError, "reference"),
]


@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)))
def test_bad_arguments_raise_clear_errors(index):
    build, error, argument = BAD_ARGUMENTS[index]
    with pytest.raises(error, match=f"`{argument}`"):
        build(make_mlp()[0])
