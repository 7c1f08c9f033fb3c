"""The geometries alone against NumPy closed forms: `ε` for random gradients
and weights of mixed shapes."""

import functools

import keras
import numpy as np
import pytest

import keras_tram

import reference


@pytest.mark.parametrize("adaptive", [True, False])
def test_released_epsilon_closed_form(adaptive):
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.normal(size=())]
    grads = [rng.normal(size=w.shape) for w in weights]
    actual = keras_tram.geometry.Released(adaptive).perturbation(
        [g.astype("float32") for g in grads], [w.astype("float32") for w in weights], 0.7
    )
    expected = reference.released_epsilon(grads, weights, 0.7, adaptive)
    assert len(actual) == len(expected) == len(weights)
    for a, want in zip(actual, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), want, rtol=1e-5, atol=1e-8)
    # The gradient enters through its norm only: flipping a sign changes nothing.
    flipped = keras_tram.geometry.Released(adaptive).perturbation(
        [-g.astype("float32") for g in grads], [w.astype("float32") for w in weights], 0.7
    )
    for a, b in zip(actual, flipped):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_released_geometry_rejects_a_non_boolean():
    with pytest.raises(TypeError, match="`adaptive`"):
        keras_tram.geometry.Released(adaptive="yes")


def test_epsilon_closed_form():
    """The geometries alone, on random gradients and weights of mixed shapes."""
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.normal(size=())]
    grads = [rng.normal(size=w.shape) for w in weights]
    cases = [
        (keras_tram.geometry.Euclidean(), functools.partial(reference.sam_epsilon, rho=1.0)),
        (keras_tram.geometry.Adaptive(0.0), functools.partial(reference.asam_epsilon, rho=1.0, eta=0.0)),
        (keras_tram.geometry.Adaptive(0.3), functools.partial(reference.asam_epsilon, rho=1.0, eta=0.3)),
        (keras_tram.geometry.Fisher(0.3), functools.partial(reference.fsam_epsilon, rho=1.0, eta=0.3)),
    ]
    for geometry, closed_form in cases:
        actual = geometry.perturbation(
            [g.astype("float32") for g in grads], [w.astype("float32") for w in weights], 1.0
        )
        expected = closed_form(grads, weights)
        assert len(actual) == len(expected) == len(weights)
        for a, want in zip(actual, expected):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), want, rtol=1e-5, atol=1e-7)
