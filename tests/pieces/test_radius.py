"""The radius pieces: what TRAM's trust-region radius measures and logs."""

import types

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram.pieces import schedule

import reference
from support import assert_weights
from support import fit_full_batch
from support import make_data
from support import make_mlp
from support import STEPS


def test_a_negative_divergence_is_clipped_to_zero():
    """Rounding can take a KL just below 0; it must not become the radius."""
    radius = keras_tram.radius.TrustRegion(keras_tram.references.PreviousWeights())
    radius.measure = lambda *args, **kwargs: (None, keras.ops.convert_to_tensor(-2e-9))
    step = types.SimpleNamespace(
        weights=[], y_pred=None, perturbation_sum=None, at=schedule.At()
    )
    assert float(radius(step)) == 0.0
    value, statistics = radius.with_statistics(step)  # what a step logs with it
    assert float(value) == 0.0 and float(statistics["divergence"]) == 0.0


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_divergence_on_a_fraction_of_the_batch_matches_closed_form(variant):
    """`divergence_batch_fraction=0.3`: d is the KL on the first ceil(0.3 · 16) = 5
    examples, and the step is TRAM's with that radius."""
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = fit_full_batch(
        keras_tram.TRAM(model, variant=variant, radius_scale=30.0,
                        divergence_batch_fraction=0.3), x, y,
    )
    expected, divergences = reference.train_tram(
        initial, x, y, STEPS, 1.0, variant, scale=30.0, fraction=0.3
    )
    full = reference.train_tram(initial, x, y, STEPS, 1.0, variant, scale=30.0)[1]
    assert not np.allclose(divergences[1:], full[1:], rtol=1e-2)  # a different estimate
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    assert_weights(model, expected)
