"""The wrapper behaves like a Keras model: delegation, history, callbacks, saving, config, arguments."""

import json

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import compiled
from support import CONSTRUCTORS
from support import make_data
from support import make_mlp


def _as_json(config):
    """Configs compared as saved (tuples and lists are the same in a `.keras` file)."""
    return json.loads(json.dumps(config))


def test_delegates_call_predict_and_evaluate():
    model, _ = make_mlp()
    wrapped = compiled(keras_tram.SAM(model))
    x, y, _ = make_data()
    np.testing.assert_allclose(
        wrapped.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(wrapped(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-6
    )
    assert wrapped.model is model
    result = wrapped.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(result) == ["accuracy", "loss"]
    expected_loss = reference.mlp_loss_and_grads(
        [w.astype(np.float64) for w in model.get_weights()], x, y
    )[0]
    np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-5)


def test_history_has_clean_metrics_and_step_statistics():
    model, _ = make_mlp()
    x, y, _ = make_data()
    history = compiled(keras_tram.SAM(model, rho=0.05)).fit(
        x, y, validation_data=(x, y), epochs=2, batch_size=16, verbose=0
    )
    assert sorted(history.history) == [
        "accuracy", "grad_norm", "loss", "radius", "skipped_steps", "val_accuracy", "val_loss"
    ]
    assert history.history["skipped_steps"] == [0.0, 0.0]
    # With one batch per epoch, the logged loss is the clean loss before the update.
    model2, initial = make_mlp()
    clean_loss = reference.mlp_loss_and_grads(initial, x, y)[0]
    np.testing.assert_allclose(history.history["loss"][0], clean_loss, rtol=1e-5)


def test_callbacks(tmp_path):
    model, initial = make_mlp()
    x, y, _ = make_data()
    schedule = lambda epoch, lr: 0.2 * 0.5**epoch
    checkpoint = str(tmp_path / "best.weights.h5")
    callbacks = [
        keras.callbacks.LearningRateScheduler(schedule),
        keras.callbacks.ModelCheckpoint(checkpoint, save_weights_only=True),
        # The radius is constant, so this stops after patience + 1 epochs.
        keras.callbacks.EarlyStopping(
            monitor="radius", mode="min", patience=1, min_delta=0.0
        ),
    ]
    wrapped = compiled(keras_tram.SAM(model, rho=0.3))
    history = wrapped.fit(
        x, y, batch_size=8, epochs=10, shuffle=False, callbacks=callbacks, verbose=0
    )
    assert len(history.history["loss"]) == 2
    batches = [(x[i:i + 8], y[i:i + 8], None) for _ in range(2) for i in (0, 8)]
    expected, _ = reference.train_sgd(
        initial, batches, lambda g, w: reference.sam_epsilon(g, w, 0.3),
        [0.2, 0.2, 0.1, 0.1],
    )
    for actual, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(actual, want, atol=1e-5)
    restored = compiled(keras_tram.SAM(make_mlp(seed=5)[0], rho=0.3))
    restored.load_weights(checkpoint)
    for actual, want in zip(restored.model.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(actual, want)


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_keras_file_round_trip_and_continued_training(name, tmp_path):
    x, y, sample_weight = make_data()
    model, _ = make_mlp(dropout=0.2)
    wrapped = compiled(CONSTRUCTORS[name](model), keras.optimizers.Adam(0.01))
    wrapped.fit(x, y, sample_weight=sample_weight, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path)

    assert type(loaded) is type(wrapped)
    assert _as_json(loaded.get_config()) == _as_json(wrapped.get_config())
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), wrapped.predict(x, verbose=0))
    for a, b in zip(loaded.optimizer.variables, wrapped.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))

    for m in (wrapped, loaded):
        m.fit(x, y, sample_weight=sample_weight, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.model.get_weights(), wrapped.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_perturbation_options_round_trip():
    wrapped = keras_tram.TRAM(
        make_mlp()[0], perturbation_scope="per_replica", perturbation_chunks=4
    )
    clone = keras_tram.TRAM.from_config(wrapped.get_config())
    assert (clone.perturbation_scope, clone.perturbation_chunks) == ("per_replica", 4)


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_config_round_trip(name):
    wrapped = CONSTRUCTORS[name](make_mlp()[0])
    config = wrapped.get_config()
    clone = type(wrapped).from_config(config)
    assert _as_json(clone.get_config()) == _as_json(config)
    assert repr(clone.geometry) == repr(wrapped.geometry)
    assert repr(clone.radius) == repr(wrapped.radius)


BAD_ARGUMENTS = [
    (lambda m: keras_tram.SAM(m, rho=-0.1), ValueError, "rho"),
    (lambda m: keras_tram.SAM(m, rho=float("nan")), ValueError, "rho"),
    (lambda m: keras_tram.SAM(m, rho=float("inf")), ValueError, "rho"),
    (lambda m: keras_tram.SAM(m, rho="0.05"), TypeError, "rho"),
    (lambda m: keras_tram.SAM(m, rho=True), TypeError, "rho"),
    (lambda m: keras_tram.ASAM(m, rho=-1.0), ValueError, "rho"),
    (lambda m: keras_tram.ASAM(m, eta=-0.5), ValueError, "eta"),
    (lambda m: keras_tram.ASAM(m, eta=float("nan")), ValueError, "eta"),
    (lambda m: keras_tram.SAM(keras.layers.Dense(3)), TypeError, "model"),
    (lambda m: keras_tram.ASAM("model.keras"), TypeError, "model"),
    (lambda m: keras_tram.SharpnessAware(m, "sam", keras_tram.radius.Constant(0.1)), TypeError, "geometry"),
    (lambda m: keras_tram.SharpnessAware(m, keras_tram.geometry.Euclidean(), 0.1), TypeError, "radius"),
    (lambda m: keras_tram.SAM(m, perturbation_scope="local"), ValueError, "perturbation_scope"),
    (lambda m: keras_tram.TRAM(m, perturbation_chunks=0), ValueError, "perturbation_chunks"),
    (lambda m: keras_tram.ASAM(m, perturbation_chunks=2.0), TypeError, "perturbation_chunks"),
]


@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)))
def test_bad_arguments_raise_clear_errors(index):
    build, error, argument = BAD_ARGUMENTS[index]
    with pytest.raises(error, match=f"`{argument}`"):
        build(make_mlp()[0])
