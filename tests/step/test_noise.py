"""Input noise: where it goes, how it is drawn, what it does to the update."""

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram._step import noise as _noise

import reference
from support import assert_weights
from support import cross_entropy
from support import fit_full_batch
from support import make_data
from support import make_mlp
from support import STEPS


def test_input_noise_update_matches_closed_form_given_the_radius():
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = fit_full_batch(
        keras_tram.TRAM(model, variant="input_noise", noise_stddev=0.3), x, y, steps=1
    )
    radius = history["radius"][0]
    assert radius > 0
    expected, _ = reference.train_sgd(
        initial, [(x, y, None)], lambda g, w: reference.asam_epsilon(g, w, radius, 0.0), 1.0
    )
    assert_weights(model, expected)


@pytest.mark.parametrize(
    "build",
    [
        lambda m, s: keras_tram.TRAM(m, variant="input_noise", noise_stddev=s),
        lambda m, s: keras_tram.R3F(m, noise_stddev=s),
    ],
    ids=["tram_input_noise", "r3f"],
)
def test_noise_divergence_is_positive_and_grows_with_stddev(build):
    x, y, _ = make_data()
    divergences = []
    for stddev in (0.0, 0.03, 0.3, 3.0):
        keras.utils.set_random_seed(0)
        history = fit_full_batch(build(make_mlp()[0], stddev), x, y, steps=1)
        divergences.append(history["divergence"][0])
    assert divergences[0] == 0
    assert 0 < divergences[1] < divergences[2] < divergences[3]


def test_noise_is_fresh_each_step_and_reproducible():
    x, y, _ = make_data()
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        model = make_mlp()[0]
        history = fit_full_batch(
            keras_tram.TRAM(model, variant="input_noise", noise_stddev=0.3), x, y,
            learning_rate=0.0,
        )
        runs.append(history["divergence"])
    # Same weights every step (lr 0), so only the noise changes d.
    assert len(set(runs[0])) == STEPS
    np.testing.assert_array_equal(runs[0], runs[1])


def test_tram_fisher_without_noise_is_fsam():
    x, y, _ = make_data()
    fisher_model, _ = make_mlp()
    fit_full_batch(
        keras_tram.TRAM(fisher_model, variant="fisher", noise_stddev=0.0, rho=0.3, eta=2.0),
        x, y, learning_rate=0.2,
    )
    fsam_model, _ = make_mlp()
    fit_full_batch(keras_tram.FSAM(fsam_model, rho=0.3, eta=2.0), x, y, learning_rate=0.2)
    assert_weights(fisher_model, fsam_model.get_weights(), atol=1e-6)
    noised_model, _ = make_mlp()
    fit_full_batch(
        keras_tram.TRAM(noised_model, variant="fisher", noise_stddev=0.5, rho=0.3, eta=2.0),
        x, y, learning_rate=0.2,
    )
    assert not np.allclose(noised_model.get_weights()[0], fsam_model.get_weights()[0])


def test_token_ids_get_noise_on_the_embedding():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(8, 6))
    y = rng.integers(0, 2, size=8)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(20, 4, name="tokens"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    for noise_layer in (None, "tokens"):
        wrapped = keras_tram.TRAM(
            model, variant="input_noise", noise_stddev=0.5, noise_layer=noise_layer
        )
        wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss=cross_entropy())
        history = wrapped.fit(tokens, y, batch_size=8, epochs=1, verbose=0)
        assert history.history["divergence"][0] > 0
    with pytest.raises(ValueError, match="noise_layer"):
        wrapped = keras_tram.R3F(model, noise_layer="missing")
        wrapped.compile(optimizer="sgd", loss=cross_entropy())
        wrapped.fit(tokens, y, verbose=0)


def test_the_noise_layer_is_the_named_one_the_embedding_or_none_for_float_inputs():
    embedding = keras.layers.Embedding(20, 4, name="tokens")
    model = keras.Sequential([keras.Input((6,), dtype="int32"), embedding,
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    assert _noise.find_layer(model, None, inputs_are_float=False) is embedding
    assert _noise.find_layer(model, "tokens", inputs_are_float=True) is embedding
    assert _noise.find_layer(model, embedding, inputs_are_float=True) is embedding
    assert _noise.find_layer(model, None, inputs_are_float=True) is None
    with pytest.raises(ValueError, match="'missing' is not a layer of the model"):
        _noise.find_layer(model, "missing", inputs_are_float=False)
    dense = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="noise_layer="):
        _noise.find_layer(dense, None, inputs_are_float=False)


def test_noise_on_some_rows_is_those_rows_of_the_batch_noise_and_leaves_the_seed():
    generator = keras.random.SeedGenerator(3)
    noise = _noise.InputNoise(model=None, seed_generator=generator)
    seed = keras.ops.convert_to_tensor(generator.state.value)
    before = keras.ops.convert_to_numpy(generator.state)
    x = np.zeros((6, 2), "float32")
    whole = keras.ops.convert_to_numpy(noise.add(x, 0.5, seed))
    part = keras.ops.convert_to_numpy(noise.add(x[2:5], 0.5, seed, rows=(2, 6)))
    np.testing.assert_array_equal(part, whole[2:5])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(noise.add(x, 0.5, seed)), whole)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(generator.state), before)
    assert np.all(whole != 0.0)
