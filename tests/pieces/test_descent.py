"""GSAM's surrogate-gap descent against its NumPy closed form."""

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram.pieces import schedule

import reference
from support import assert_weights
from support import batches
from support import counted
from support import epoch_means
from support import EXECUTION_MODES
from support import fit_in_batches
from support import LEARNING_RATE
from support import make_data
from support import make_mlp


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_gsam_matches_closed_form(mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    lr = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=8)
    rho = schedule.FollowLearningRate(rho_max=0.4, rho_min=0.1)
    history = fit_in_batches(keras_tram.GSAM(model, rho=rho, alpha=0.5), x, y,
                   keras.optimizers.SGD(lr), mode=mode)
    rates = [reference.cosine_decay(LEARNING_RATE, 8, t) for t in range(8)]
    rhos = [reference.follow_learning_rate(0.4, 0.1, r, LEARNING_RATE) for r in rates]
    expected = reference.train_gsam(initial, batches(x, y), rhos, 0.5, rates)
    sam, _ = reference.train_sgd(
        initial, batches(x, y), counted(lambda t, g, w: reference.sam_epsilon(g, w, rhos[t])),
        rates,
    )
    assert max(np.abs(a - b).max() for a, b in zip(expected, sam)) > 1e-3  # not SAM
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], epoch_means(rhos), rtol=1e-5)


def test_gsam_defaults_follow_the_learning_rate():
    model, _ = make_mlp()
    wrapped = keras_tram.GSAM(model)
    assert wrapped.alpha == 0.4
    assert wrapped.rho.get_config() == {"rho_max": 0.05, "rho_min": 0.0, "lr_max": None,
                                        "lr_min": 0.0}
    x, y, _ = make_data()
    history = fit_in_batches(wrapped, x, y, epochs=1)  # a constant learning rate: ρ = ρ_max
    np.testing.assert_allclose(history["radius"], [0.05], rtol=1e-6)
    assert keras_tram.wrap(model, "gsam").alpha == 0.4


def test_gsam_with_alpha_zero_is_sam():
    x, y, _ = make_data()
    results = []
    for make in (lambda m: keras_tram.GSAM(m, rho=0.3, alpha=0.0),
                 lambda m: keras_tram.SAM(m, rho=0.3)):
        model, _ = make_mlp()
        fit_in_batches(make(model), x, y)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-7)
