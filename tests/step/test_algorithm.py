"""The step on its state: BatchNorm and dropout from the clean pass, a zero gradient, non-finite batches."""

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import BACKEND
from support import compiled
from support import CONSTRUCTORS
from support import make_data
from support import make_mlp


def test_batchnorm_statistics_update_once_from_the_clean_pass():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 5)).astype("float32")
    bn = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, use_bias=False), bn, keras.layers.Dense(3)]
    )
    model.layers[0].set_weights([kernel])
    x, y, _ = make_data()
    compiled(keras_tram.SAM(model, rho=0.5)).fit(x, y, batch_size=16, epochs=1, verbose=0)
    activations = x.astype(np.float64) @ kernel
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), 0.1 * activations.mean(0), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance),
        0.9 + 0.1 * activations.var(0),
        rtol=1e-4,
    )


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_both_passes_see_the_clean_pass_dropout_mask(method):
    rate = 0.4
    model, initial = make_mlp(dropout=rate)
    dropout = model.layers[1]
    seed_state = keras.ops.convert_to_numpy(dropout.seed_generator.state)
    x, y, _ = make_data()
    if method == "sam":
        wrapped, epsilon = keras_tram.SAM(model, rho=0.3), (
            lambda g, w: reference.sam_epsilon(g, w, 0.3))
    else:
        wrapped, epsilon = keras_tram.ASAM(model, rho=0.5), (
            lambda g, w: reference.asam_epsilon(g, w, 0.5, 0.0))
    compiled(wrapped, optimizer=keras.optimizers.SGD(0.2))

    def draw_mask():
        return dropout.stateless_call(
            [], [keras.ops.convert_to_tensor(seed_state)], keras.ops.ones((len(x), 5)),
            training=True,
        )[0]

    if BACKEND == "tensorflow" and wrapped.jit_compile:
        import tensorflow as tf  # XLA draws other random bits than TensorFlow's graph

        draw_mask = tf.function(draw_mask, jit_compile=True)
    scaled_mask = keras.ops.convert_to_numpy(draw_mask()).astype(np.float64)
    assert 0 < (scaled_mask == 0).mean() < 1
    wrapped.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    expected, _ = reference.train_sgd(
        initial, [(x, y, None)], epsilon, 0.2, dropout=scaled_mask
    )
    for actual, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(actual, want, atol=1e-5, rtol=1e-5)

    # The seed generator advanced exactly as one plain Keras step advances it.
    plain, _ = make_mlp(dropout=rate)
    compiled(plain).fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(dropout.seed_generator.state),
        keras.ops.convert_to_numpy(plain.layers[1].seed_generator.state),
    )


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_zero_gradient_gives_zero_perturbation(name):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="zeros")]
    )
    wrapped = CONSTRUCTORS[name](model)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    history = wrapped.fit(x, np.zeros((8, 3), "float32"), epochs=2, verbose=0)
    assert history.history["grad_norm"] == [0.0, 0.0]
    for weight in model.get_weights():
        np.testing.assert_array_equal(weight, np.zeros_like(weight))


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_non_finite_batch_never_reaches_the_weights(name):
    x, y, _ = make_data()
    poisoned = x.copy()
    poisoned[8:12, 0] = np.nan  # the second of three batches
    x3, y3 = np.concatenate([x[:8], poisoned[8:12], x[12:]]), y

    model, _ = make_mlp()
    history = compiled(CONSTRUCTORS[name](model), keras.optimizers.Adam(0.05)).fit(
        x3, y3, batch_size=4, epochs=1, shuffle=False, verbose=0
    )
    assert history.history["skipped_steps"] == [1.0]
    statistics = {k: v for k, v in history.history.items()
                  if k not in ("loss", "accuracy", "skipped_steps")}
    assert statistics and all(np.isfinite(v).all() for v in statistics.values()), statistics
    clean_model, _ = make_mlp()
    keep = np.r_[0:8, 12:16]
    compiled(CONSTRUCTORS[name](clean_model), keras.optimizers.Adam(0.05)).fit(
        x[keep], y[keep], batch_size=4, epochs=1, shuffle=False, verbose=0
    )
    for actual, want in zip(model.get_weights(), clean_model.get_weights()):
        assert np.all(np.isfinite(actual))
        np.testing.assert_allclose(actual, want, atol=1e-6)
