"""How often the full step runs: LookSAM's reuse of the sharpness direction
against its NumPy closed form, in every execution mode, with accumulation,
loss scaling, noise and convolutions."""

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

METHODS = {
    "sam": (
        lambda model, **options: keras_tram.SAM(model, rho=0.3, **options),
        lambda g, w: reference.sam_epsilon(g, w, rho=0.3),
    ),
    "asam": (
        lambda model, **options: keras_tram.ASAM(model, rho=0.5, eta=0.0, **options),
        lambda g, w: reference.asam_epsilon(g, w, rho=0.5, eta=0.0),
    ),
    "tram_previous_step": (
        # A radius large enough that g_v stands well above float32's rounding.
        lambda model, **options: keras_tram.TRAM(
            model, variant="previous_step", radius_scale=TRAM_SCALE, **options
        ),
        None,  # the closed form's own TRAM-θ_{t-1}
    ),
}


TRAM_SCALE = 20.0


LEARNING_RATE = 0.5


EVERY, STRENGTH = 3, 0.7


def _batches(x, y, size, epochs=2):
    return [(x[i:i + size], y[i:i + size], None)
            for _ in range(epochs) for i in range(0, len(x), size)]


def _fit(method, optimizer=None, batch_size=4, epochs=2, **options):
    build, _ = METHODS[method]
    model, initial = make_mlp()
    x, y, _ = make_data()
    compile_options = {k: options.pop(k) for k in ("jit_compile", "run_eagerly",
                                                   "steps_per_execution") if k in options}
    wrapped = build(model, **options)
    wrapped.compile(optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE),
                    loss=cross_entropy(), **compile_options)
    history = wrapped.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False,
                          verbose=0).history
    return wrapped, history, initial, _batches(x, y, batch_size, epochs)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_reuse_matches_closed_form(method, mode):
    """k = 3, α = 0.7 over 8 updates: full steps at 0, 3 and 6, the others
    along `g + α (‖g‖ / ‖g_v‖) g_v`; the radius logged over full steps only."""
    wrapped, history, initial, batches = _fit(
        method, perturbation_every=EVERY, reuse_strength=STRENGTH, **EXECUTION_MODES[mode]
    )
    _, epsilon = METHODS[method]
    expected, radii = reference.train_reuse(
        initial, batches, EVERY, STRENGTH, LEARNING_RATE, epsilon, scale=TRAM_SCALE
    )
    assert_weights(wrapped.model, expected)
    assert len(radii) == 3
    assert history["full_steps"] == [2.0, 1.0]
    if method == "tram_previous_step":
        # Epoch 1 has the full steps 0 and 3, epoch 2 the full step 6.
        want = [np.mean(radii[:2]), radii[2]]
        np.testing.assert_allclose(history["radius"], want, rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(np.array(history["divergence"]) * TRAM_SCALE, want,
                                   rtol=1e-4, atol=1e-8)
        assert radii[1] > 0
    else:
        np.testing.assert_allclose(history["radius"], [wrapped.radius.rho] * 2, rtol=1e-6)
    # The reuse matters: without it (α = 0) the weights are others.
    without, _ = reference.train_reuse(
        initial, batches, EVERY, 0.0, LEARNING_RATE, epsilon, scale=TRAM_SCALE
    )
    assert not np.allclose(without[0], expected[0], atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_update_a_full_step_is_the_method_itself(method):
    """`perturbation_every=1` is today's step bit for bit, whatever α, and
    keeps no direction."""
    runs = [_fit(method), _fit(method, perturbation_every=1, reuse_strength=0.2)]
    (default, history, _, _), (explicit, explicit_history, _, _) = runs
    assert explicit_history == history
    for a, b in zip(default.model.get_weights(), explicit.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(explicit.non_trainable_variables) == len(default.non_trainable_variables)


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras refuses steps_per_execution > 1 on torch")
def test_several_updates_per_execution_take_their_full_steps_in_turn():
    """`steps_per_execution=4`: one execution holds four updates, and each
    still is a full step or not by its own index (0, 3 and 6 of 8)."""
    wrapped, history, initial, batches = _fit(
        "tram_previous_step", perturbation_every=EVERY, reuse_strength=STRENGTH,
        steps_per_execution=4,
    )
    expected, radii = reference.train_reuse(
        initial, batches, EVERY, STRENGTH, LEARNING_RATE, scale=TRAM_SCALE
    )
    assert_weights(wrapped.model, expected)
    assert len(radii) == 3 and history["full_steps"] == [2.0, 1.0]


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted after epoch 2")


def test_a_resumed_fit_continues_the_full_and_reuse_pattern(tmp_path):
    """k = 3 over epochs of 4 updates: the full steps (updates 0, 3, 6, 9,
    12, 15) cross the epochs. A fit interrupted after its second epoch and
    resumed by `BackupAndRestore` in a new wrapper takes them where the
    uninterrupted one does: the closed form's weights, and full steps 9 | 12,
    15 in the resumed epochs."""
    x, y, _ = make_data()
    build, _ = METHODS["tram_previous_step"]
    backup = str(tmp_path / "backup")

    def fit(callbacks):
        model, initial = make_mlp()
        wrapped = build(model, perturbation_every=EVERY, reuse_strength=STRENGTH)
        wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy())
        history = wrapped.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0,
                              callbacks=[keras.callbacks.BackupAndRestore(backup), *callbacks])
        return model, initial, history.history

    with pytest.raises(RuntimeError, match="interrupted"):
        fit([_Interrupt()])
    model, initial, history = fit([])
    expected, radii = reference.train_reuse(
        initial, _batches(x, y, 4, epochs=4), EVERY, STRENGTH, LEARNING_RATE, scale=TRAM_SCALE
    )
    assert len(radii) == 6
    assert_weights(model, expected)
    assert history["full_steps"] == [1.0, 2.0]


@pytest.mark.parametrize("method", ["sam", "tram_previous_step"])
def test_reuse_with_gradient_accumulation(method):
    """Micro-steps of one update are all full or all reuse steps; a full
    update's `g_v` is the mean of its micro-steps'."""
    optimizer = keras.optimizers.SGD(LEARNING_RATE, gradient_accumulation_steps=2)
    wrapped, _, initial, batches = _fit(
        method, optimizer=optimizer, perturbation_every=2, epochs=4
    )
    _, epsilon = METHODS[method]
    expected, radii = reference.train_reuse(
        initial, batches, 2, STRENGTH, LEARNING_RATE, epsilon, accumulate=2, scale=TRAM_SCALE
    )
    assert len(radii) == 8  # 8 updates of 2 micro-steps; 4 of them full
    assert_weights(wrapped.model, expected)


@pytest.mark.parametrize("method", ["sam", "asam"])
def test_reuse_undoes_loss_scaling(method):
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LEARNING_RATE), initial_scale=1024.0
    )
    wrapped, _, initial, batches = _fit(
        method, optimizer=optimizer, perturbation_every=EVERY, reuse_strength=STRENGTH
    )
    _, epsilon = METHODS[method]
    expected, _ = reference.train_reuse(initial, batches, EVERY, STRENGTH, LEARNING_RATE, epsilon)
    assert_weights(wrapped.model, expected)


def _fit_under(policy, build=None):
    """An SGD(0.1) fit of the MLP, 2 epochs of 4 batches, with the global
    dtype policy `policy`; its weights in float64, and the initial ones."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)  # the same noise for the methods that draw some
    try:
        model, initial = make_mlp()
        x, y, _ = make_data()
        wrapped = model if build is None else build(model)
        wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss=cross_entropy())
        wrapped.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return [np.asarray(w, np.float64) for w in model.get_weights()], initial


_FLOAT32_FITS = {}  # what both policies are compared with, fitted once


def _float32_fit(name, build=None):
    if name not in _FLOAT32_FITS:
        _FLOAT32_FITS[name] = _fit_under("float32", build)
    return _FLOAT32_FITS[name]


def _gap(weights, others):
    return max(float(np.abs(a - b).max()) for a, b in zip(weights, others))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_reuse_under_mixed_precision_follows_float32(policy):
    """TRAM's radius is small (d is 1e-4 to 1e-3 here), so `g_v` is the
    difference of two nearly equal gradients: through float16 or bfloat16
    layers it would be rounding, scaled up to `α ‖g‖` (the weights were 1e-2
    to 4e-2 from float32's). A full step that keeps `g_v` takes its passes in
    the variables' float32, and the fit stays as close to float32, and to the
    float64 closed form, as plain training does (within 10×; or as float32
    is to float64, where the backend runs the policy's plain training in
    float32, as JAX 0.4 does bfloat16 on a CPU)."""
    methods = {
        **{variant: lambda m, v=variant: keras_tram.TRAM(m, variant=v, perturbation_every=2)
           for variant in ("previous_step", "pretrained", "input_noise")},
        "tram_fisher": lambda m: keras_tram.TRAMFisher(m, perturbation_every=2),
        "sam": lambda m: keras_tram.SAM(m, perturbation_every=2),
        "asam": lambda m: keras_tram.ASAM(m, perturbation_every=2),
        "fsam": lambda m: keras_tram.FSAM(m, perturbation_every=2),
    }
    float32, initial = _float32_fit("previous_step", methods["previous_step"])
    x, y, _ = make_data()
    expected, radii = reference.train_reuse(initial, _batches(x, y, 4), 2, STRENGTH, 0.1)
    assert 0 < radii[1] < 1e-2  # a small radius: the case this is about
    plain = _gap(_fit_under(policy)[0], _float32_fit("plain")[0])
    tolerance = 10 * max(plain, _gap(float32, expected))
    assert tolerance < 1e-2  # well below what amplified rounding gave
    mixed = {name: _fit_under(policy, build)[0] for name, build in methods.items()}
    for name, build in methods.items():
        assert _gap(mixed[name], _float32_fit(name, build)[0]) <= tolerance, name
    assert _gap(mixed["previous_step"], expected) <= tolerance  # against float64


BAD_ARGUMENTS = [
    ({"perturbation_every": 0}, ValueError),
    ({"perturbation_every": -2}, ValueError),
    ({"perturbation_every": 2.0}, TypeError),
    ({"perturbation_every": True}, TypeError),
    ({"reuse_strength": -0.1}, ValueError),
    ({"reuse_strength": float("nan")}, ValueError),
    ({"reuse_strength": "0.7"}, TypeError),
]


@pytest.mark.parametrize("method", ["sam", "tram_previous_step"])
@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)))
def test_bad_reuse_arguments_raise_clear_errors(method, index):
    options, error = BAD_ARGUMENTS[index]
    (argument,) = options
    with pytest.raises(error, match=f"`{argument}`"):
        METHODS[method][0](make_mlp()[0], **options)


def test_the_step_trace_has_the_radius_of_full_steps_only():
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = METHODS["tram_previous_step"][0](model, perturbation_every=EVERY)
    wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy())
    trace = keras_tram.analysis.StepStatistics()
    wrapped.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[trace])
    _, radii = reference.train_reuse(initial, _batches(x, y, 4), EVERY, STRENGTH,
                                     LEARNING_RATE, scale=TRAM_SCALE)
    steps = np.array(trace.steps["radius"])
    full = np.arange(8) % EVERY == 0
    np.testing.assert_allclose(steps[full], radii, rtol=1e-4, atol=1e-7)
    assert np.isnan(steps[~full]).all()
    assert np.isfinite(trace.steps["grad_norm"]).all()


def test_tram_fisher_steps_in_between_take_the_clean_gradient():
    """TRAM-Fisher's full step takes its first gradient on noised inputs; a
    step in between descends along the gradient on the clean inputs (with
    α = 0, a plain SGD step)."""
    model, _ = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(model, variant="fisher", noise_stddev=0.5,
                              perturbation_every=2, reuse_strength=0.0)
    wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy())
    wrapped.train_on_batch(x, y)  # update 0: the full step
    after_full = [np.array(w, np.float64) for w in model.get_weights()]
    wrapped.train_on_batch(x, y)  # update 1: in between
    _, grads = reference.mlp_loss_and_grads(after_full, x, y)
    assert_weights(model, [w - LEARNING_RATE * g for w, g in zip(after_full, grads)])


def test_a_convolutional_model_reuses_the_same_way_in_every_execution_mode():
    """Under XLA on a CPU, where a convolution inside a `cond` runs as plain
    loops, both kinds of step run and one is selected: the same weights."""
    from keras_tram._ops import backend as _backend

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=16)
    results = {}
    for mode, options in EXECUTION_MODES.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6, 2)), keras.layers.Conv1D(4, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(3)])
        wrapped = keras_tram.SAM(model, rho=0.3, perturbation_every=2)
        wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy(),
                        **options)
        wrapped.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results[mode] = model.get_weights()
        selects = _backend.slow_convolutions_in_branches(wrapped)
        assert selects == (mode == "xla" or keras.backend.backend() == "jax")
    first, *others = results.values()
    for other in others:
        for a, b in zip(first, other):
            np.testing.assert_allclose(a, b, atol=1e-5)
