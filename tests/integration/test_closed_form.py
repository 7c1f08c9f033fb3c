"""Whole fits of SAM and ASAM against NumPy closed forms in every execution
mode: sample weights, regularizers, loss scaling, clipping, accumulation,
chunks, logged statistics."""

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import assert_weights
from support import BACKEND
from support import cross_entropy
from support import EXECUTION_MODES
from support import make_data
from support import make_mlp

METHODS = {
    "sam": (
        lambda model: keras_tram.SAM(model, rho=0.3),
        lambda g, w: reference.sam_epsilon(g, w, rho=0.3),
    ),
    "asam": (
        lambda model: keras_tram.ASAM(model, rho=0.5, eta=0.0),
        lambda g, w: reference.asam_epsilon(g, w, rho=0.5, eta=0.0),
    ),
    "asam_eta": (
        lambda model: keras_tram.ASAM(model, rho=0.5, eta=0.1),
        lambda g, w: reference.asam_epsilon(g, w, rho=0.5, eta=0.1),
    ),
}


LEARNING_RATE = 0.2


def _fit_and_reference(method, batch_size=8, epochs=2, weighted=False, l2=0.0,
                       steps_per_execution=1, optimizer=None, **compile_kwargs):
    wrap, epsilon = METHODS[method]
    model, initial = make_mlp(l2=l2)
    x, y, sample_weight = make_data()
    sample_weight = sample_weight if weighted else None
    wrapped = wrap(model)
    wrapped.compile(
        optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE),
        loss=cross_entropy(),
        steps_per_execution=steps_per_execution,
        **compile_kwargs,
    )
    history = wrapped.fit(
        x, y, sample_weight=sample_weight, batch_size=batch_size,
        epochs=epochs, shuffle=False, verbose=0,
    )
    batches = [
        (x[i:i + batch_size], y[i:i + batch_size],
         None if sample_weight is None else sample_weight[i:i + batch_size])
        for _ in range(epochs) for i in range(0, len(x), batch_size)
    ]
    expected, grad_norms = reference.train_sgd(
        initial, batches, epsilon, LEARNING_RATE, l2=l2
    )
    return model, expected, grad_norms, history


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_weights_match_closed_form(method, mode):
    model, expected, grad_norms, history = _fit_and_reference(
        method, **EXECUTION_MODES[mode]
    )
    assert_weights(model, expected)
    # The logged grad_norm is the epoch mean of the clean gradient norms.
    steps_per_epoch = len(grad_norms) // 2
    np.testing.assert_allclose(
        history.history["grad_norm"],
        [np.mean(grad_norms[:steps_per_epoch]), np.mean(grad_norms[steps_per_epoch:])],
        rtol=1e-5,
    )


@pytest.mark.parametrize("method", ["sam", "asam_eta"])
def test_sample_weight_and_regularizer(method):
    model, expected, _, _ = _fit_and_reference(method, weighted=True, l2=0.05)
    assert_weights(model, expected)


if BACKEND != "torch":  # Keras itself runs torch steps one at a time.

    @pytest.mark.parametrize("method", ["sam", "asam"])
    def test_steps_per_execution(method):
        model, expected, _, _ = _fit_and_reference(
            method, batch_size=4, steps_per_execution=2
        )
        assert_weights(model, expected)


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_loss_scaling_is_undone(method):
    """A loss-scaled optimizer gives the same weights and the unscaled grad_norm."""
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LEARNING_RATE), initial_scale=1024.0
    )
    model, expected, grad_norms, history = _fit_and_reference(
        method, epochs=1, batch_size=16, optimizer=optimizer
    )
    assert_weights(model, expected)
    np.testing.assert_allclose(history.history["grad_norm"], grad_norms, rtol=1e-5)


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_radius_is_logged(method):
    _, _, _, history = _fit_and_reference(method, epochs=1)
    rho = {"sam": 0.3, "asam": 0.5}[method]
    np.testing.assert_allclose(history.history["radius"], [rho], rtol=1e-6)


CLIPPING = {
    "global_clipnorm": lambda grads: reference.clip_global_norm(grads, 0.05),
    "clipnorm": lambda grads: reference.clip_each_norm(grads, 0.05),
}


@pytest.mark.parametrize("clipping", sorted(CLIPPING))
@pytest.mark.parametrize("method", ["sam", "asam"])
def test_clipping_acts_on_the_descent_gradient(method, clipping):
    """`clipnorm` / `global_clipnorm` of the optimizer clip the gradient it
    applies (the one at θ + ε), not the one that shapes ε."""
    wrap, epsilon = METHODS[method]
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = wrap(model)
    wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, **{clipping: 0.05}),
                    loss=cross_entropy())
    wrapped.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    batches = [(x[i:i + 8], y[i:i + 8], None) for _ in range(2) for i in (0, 8)]
    expected, _ = reference.train_sgd(initial, batches, epsilon, LEARNING_RATE,
                                      clip=CLIPPING[clipping])
    unclipped, _ = reference.train_sgd(initial, batches, epsilon, LEARNING_RATE)
    assert not np.allclose(expected[0], unclipped[0], atol=1e-4)  # the clip bites
    assert_weights(model, expected)


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_gradient_accumulation_averages_the_descent_gradients(method):
    """With `gradient_accumulation_steps=2` each batch is perturbed at the
    weights of the last update, and the two descent gradients are averaged
    into one update."""
    wrap, epsilon = METHODS[method]
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = wrap(model)
    wrapped.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, gradient_accumulation_steps=2),
        loss=cross_entropy(),
    )
    wrapped.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    batches = [(x[i:i + 4], y[i:i + 4], None) for _ in range(2) for i in range(0, 16, 4)]
    expected, _ = reference.train_sgd(initial, batches, epsilon, LEARNING_RATE, accumulate=2)
    assert_weights(model, expected)


@pytest.mark.parametrize("method", ["sam", "asam"])
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_perturbation_chunks_are_m_sharpness(method, mode):
    """With `perturbation_chunks=2` each half batch gets its own ε from its
    own gradient at the same weights, and the update is the mean of the two
    descent gradients: SAM's m-sharpness with m = batch / 2."""
    _, epsilon = METHODS[method]
    model, initial = make_mlp()
    x, y, sample_weight = make_data()
    rho = {"sam": 0.3, "asam": 0.5}[method]
    cls = {"sam": keras_tram.SAM, "asam": keras_tram.ASAM}[method]
    wrapped = cls(model, rho=rho, perturbation_chunks=2)
    wrapped.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy(),
        **EXECUTION_MODES[mode],
    )
    history = wrapped.fit(
        x, y, sample_weight=sample_weight, batch_size=8, epochs=2, shuffle=False, verbose=0
    )
    halves = [
        (x[i:i + 4], y[i:i + 4], sample_weight[i:i + 4])
        for _ in range(2) for i in range(0, 16, 4)
    ]
    expected, grad_norms = reference.train_sgd(
        initial, halves, epsilon, LEARNING_RATE, accumulate=2
    )
    assert_weights(model, expected)
    # Each half's gradient norm, averaged over the halves and the steps.
    np.testing.assert_allclose(
        history.history["grad_norm"], [np.mean(grad_norms[:4]), np.mean(grad_norms[4:])],
        rtol=1e-5,
    )


def test_uneven_chunks_are_weighted_by_their_size():
    """A batch of 6 in 4 chunks (sizes 1, 2, 1, 2): the descent gradient is
    the size-weighted sum of the chunks' mean descent gradients."""
    _, epsilon = METHODS["sam"]
    model, initial = make_mlp()
    x, y, _ = make_data(n=6)
    wrapped = keras_tram.SAM(model, rho=0.3, perturbation_chunks=4)
    wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy())
    wrapped.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    weights = [np.array(w, dtype=np.float64) for w in initial]
    descent = [np.zeros_like(w) for w in weights]
    for start, stop in [(0, 1), (1, 3), (3, 4), (4, 6)]:
        # One step at learning rate 1 moves the weights by the descent gradient.
        moved, _ = reference.train_sgd(
            weights, [(x[start:stop], y[start:stop], None)], epsilon, 1.0
        )
        for d, w, m in zip(descent, weights, moved):
            d += (stop - start) / 6 * (w - m)
    expected = [w - LEARNING_RATE * d for w, d in zip(weights, descent)]
    assert_weights(model, expected)


def test_more_chunks_than_examples_is_a_clear_error():
    model, _ = make_mlp()
    x, y, _ = make_data(n=4)
    wrapped = keras_tram.SAM(model, perturbation_chunks=8)
    wrapped.compile(optimizer="sgd", loss=cross_entropy(), run_eagerly=True)
    with pytest.raises(ValueError, match="`perturbation_chunks`"):
        wrapped.fit(x, y, batch_size=4, verbose=0)


@pytest.mark.parametrize("method", ["sam", "asam_eta"])
def test_relative_perturbation_is_logged_on_request(method):
    """`log_relative_perturbation=True` logs the epoch mean of `‖ε‖ / ‖θ‖`."""
    build, epsilon = METHODS[method]
    assert "relative_perturbation" not in build(make_mlp()[0]).statistic_names
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = {
        "sam": lambda m: keras_tram.SAM(m, rho=0.3, log_relative_perturbation=True),
        "asam_eta": lambda m: keras_tram.ASAM(m, rho=0.5, eta=0.1,
                                              log_relative_perturbation=True),
    }[method](model)
    assert wrapped.get_config()["log_relative_perturbation"] is True
    wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy())
    history = wrapped.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    weights = [np.array(w, np.float64) for w in initial]
    relative = []
    for i in range(0, 16, 4):
        _, grads = reference.mlp_loss_and_grads(weights, x[i:i + 4], y[i:i + 4])
        eps = epsilon(grads, weights)
        relative.append(reference.global_norm(eps) / reference.global_norm(weights))
        perturbed = [w + e for w, e in zip(weights, eps)]
        _, descent = reference.mlp_loss_and_grads(perturbed, x[i:i + 4], y[i:i + 4])
        weights = [w - LEARNING_RATE * g for w, g in zip(weights, descent)]
    np.testing.assert_allclose(history.history["relative_perturbation"], [np.mean(relative)],
                               rtol=1e-5)
    assert_weights(wrapped.model, weights)


def test_log_relative_perturbation_must_be_a_boolean():
    with pytest.raises(TypeError, match="`log_relative_perturbation`"):
        keras_tram.SAM(make_mlp()[0], log_relative_perturbation=1)
