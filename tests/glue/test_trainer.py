"""Keras's train_step contract around the step: execution modes, skipped steps, resuming, mixed precision, accumulation, one trace."""

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import ALL_METHODS
from support import assert_weights
from support import BACKEND
from support import cross_entropy
from support import EXECUTION_MODES
from support import fit_full_batch
from support import fresh_compiled
from support import make_data
from support import make_mlp
from support import STEPS


class SubclassedMLP(keras.Model):
    """The reference MLP as a subclassed model, unbuilt until it first sees data."""

    def __init__(self, weights):
        super().__init__()
        w1, b1, w2, b2 = (keras.initializers.Constant(w) for w in weights)
        self.hidden = keras.layers.Dense(
            5, activation="tanh", kernel_initializer=w1, bias_initializer=b1
        )
        self.logits = keras.layers.Dense(3, kernel_initializer=w2, bias_initializer=b2)

    def call(self, inputs):
        return self.logits(self.hidden(inputs))


class _Interrupt(keras.callbacks.Callback):
    """Stops the process-like run at the end of an epoch, as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_every_execution_mode_gives_the_same_weights(name):

    x, y, _ = make_data()
    results = {}
    for mode, compile_kwargs in EXECUTION_MODES.items():
        keras.utils.set_random_seed(11)
        # No dropout: TensorFlow's XLA and non-XLA kernels draw different masks
        # from the same seed.
        model, _ = make_mlp()
        wrapped = ALL_METHODS[name](model)
        wrapped.compile(
            optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy(), **compile_kwargs
        )
        wrapped.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results[mode] = model.get_weights()
        assert all(np.all(np.isfinite(w)) for w in results[mode])
    if BACKEND == "tensorflow" and wrapped.uses_noise:
        # TensorFlow's XLA kernels draw other random numbers from the same seed.
        del results["xla"]
    first, *others = results.values()
    for other in others:
        for a, b in zip(first, other):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_unbuilt_subclassed_model(variant):
    _, initial = make_mlp()
    x, y, _ = make_data()
    model = SubclassedMLP(initial)
    assert not model.built
    history = fit_full_batch(keras_tram.TRAM(model, variant=variant), x, y)
    expected, divergences = reference.train_tram(initial, x, y, STEPS, 1.0, variant)
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    assert_weights(model, expected)


def _state(wrapped):
    """Everything a step may change: weights, the wrapper's references and
    seeds, and the optimizer's slots and step counter."""
    variables = (wrapped.model.weights + wrapped.non_trainable_variables
                 + wrapped.optimizer.variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _fits_with_and_without(poisoned, x, y, rows, make_wrapped):
    """`[(history, state)]` of two fits from the same seeds (weights, noise):
    on `poisoned` (`x` with NaN in its batch `rows`), and on `x` without
    those rows."""
    runs = []
    for inputs, labels in ((poisoned, y), (np.delete(x, rows, 0), np.delete(y, rows))):
        keras.utils.set_random_seed(0)
        wrapped = make_wrapped()
        wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
        history = wrapped.fit(inputs, labels, batch_size=4, epochs=2, shuffle=False, verbose=0)
        runs.append((history.history, _state(wrapped)))
    return runs


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_a_non_finite_batch_changes_nothing_and_is_counted(name):
    """Training through a NaN batch ends exactly where training without it does:
    weights, reference copies, noise seeds and optimizer state."""
    x, y, _ = make_data()
    poisoned = x.copy()
    poisoned[8:12, 0] = np.nan  # the third of four batches
    runs = _fits_with_and_without(poisoned, x, y, np.s_[8:12],
                                  lambda: ALL_METHODS[name](make_mlp()[0]))
    (poisoned_history, poisoned_state), (clean_history, clean_state) = runs
    assert poisoned_history["skipped_steps"] == [1.0, 1.0]
    assert clean_history["skipped_steps"] == [0.0, 0.0]
    for name_, values in poisoned_history.items():
        if name_ not in ("loss", "accuracy"):
            assert np.isfinite(values).all(), (name_, values)
    for actual, want in zip(poisoned_state, clean_state):
        np.testing.assert_allclose(actual, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["sam", "tram_previous_step"])
def test_a_non_finite_batch_changes_nothing_in_a_convolutional_model(name):
    """As above for a model with convolutions, whose step (under XLA on a
    CPU) selects the update rather than branching to it."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 12)
    poisoned = x.copy()
    poisoned[4:8, 0, 0] = np.nan  # the second of three batches
    make = {"sam": lambda m: keras_tram.SAM(m, rho=0.1),
            "tram_previous_step": ALL_METHODS["tram_previous_step"]}
    runs = _fits_with_and_without(poisoned, x, y, np.s_[4:8], lambda: make[name](
        keras.Sequential([
            keras.Input((6, 2)), keras.layers.Conv1D(3, 3, activation="tanh"),
            keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3),
        ])
    ))
    (poisoned_history, poisoned_state), (_, clean_state) = runs
    assert poisoned_history["skipped_steps"] == [1.0, 1.0]
    for actual, want in zip(poisoned_state, clean_state):
        np.testing.assert_allclose(actual, want, rtol=1e-6, atol=1e-7)


def test_an_overflowing_perturbation_is_skipped():
    """A finite first gradient whose perturbed pass overflows: the second
    gradient is not finite, the step is skipped and counted, and no
    non-finite value reaches the weights."""
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.SAM(model, rho=3e38)  # near float32.max: θ + ε overflows
    wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss=cross_entropy())
    history = wrapped.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert history.history["skipped_steps"][0] >= 1
    assert np.isfinite(history.history["grad_norm"]).all()
    assert all(np.isfinite(w).all() for w in model.get_weights())


def _fresh(name):
    """The same new, compiled model every time: seeds, weights and dropout."""
    return fresh_compiled(ALL_METHODS[name])


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_backup_and_restore_resumes_exactly(name, tmp_path):
    """A run interrupted after epoch 2 and resumed by `BackupAndRestore` in a
    new model ends with the weights, references, seeds and optimizer state of
    an uninterrupted run."""
    x, y, _ = make_data()

    def fit(wrapped, callbacks=()):
        return wrapped.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                           callbacks=list(callbacks))

    uninterrupted = _fresh(name)
    fit(uninterrupted)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(_fresh(name), [backup, _Interrupt(epoch=1)])
    resumed = _fresh(name)
    history = fit(resumed, [keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    for actual, want in zip(_state(resumed), _state(uninterrupted)):
        np.testing.assert_allclose(actual, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_model_checkpoint_weights_resume_exactly(name, tmp_path):
    """A new model resumed from `ModelCheckpoint(save_weights_only=True)`'s
    file of epoch 2 ends with the weights, references, seeds and optimizer
    state of an uninterrupted run. (A `.keras` file resumes the same way:
    `test_keras_file_round_trip_and_resumed_training`.)"""
    x, y, _ = make_data()

    def fit(wrapped, initial_epoch=0, epochs=4, callbacks=()):
        return wrapped.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch,
                           shuffle=False, verbose=0, callbacks=list(callbacks))

    uninterrupted = _fresh(name)
    fit(uninterrupted)
    path = str(tmp_path / "epoch.weights.h5")
    fit(_fresh(name), epochs=2, callbacks=[
        keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    ])
    resumed = _fresh(name)
    # As for any Keras model: an optimizer loads its state once built.
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(path)
    fit(resumed, initial_epoch=2)
    for actual, want in zip(_state(resumed), _state(uninterrupted)):
        np.testing.assert_allclose(actual, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_mixed_precision_stays_close_to_float32(name, policy):
    """Norms, radii and divergences are taken in float32 and loss scaling is
    undone first, so a mixed-precision run follows the float32 one."""
    x, y, _ = make_data()
    results = []
    for run_policy in ("float32", policy):
        keras.mixed_precision.set_global_policy(run_policy)
        keras.utils.set_random_seed(0)
        model, initial = make_mlp()
        wrapped = ALL_METHODS[name](model)
        wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss=cross_entropy())
        history = wrapped.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append((history.history, model.get_weights()))
    keras.mixed_precision.set_global_policy("float32")
    (reference_history, reference_weights), (history, weights) = results
    if policy == "mixed_float16":
        assert isinstance(wrapped.optimizer, keras.optimizers.LossScaleOptimizer)
    assert history["skipped_steps"] == [0.0, 0.0]
    tolerance = 2e-2 if policy == "mixed_bfloat16" else 5e-3  # bfloat16 keeps 8 bits
    for key in ("grad_norm", "radius", "divergence", "penalty"):
        if key in history:
            np.testing.assert_allclose(history[key], reference_history[key],
                                       rtol=10 * tolerance, atol=tolerance)
    for actual, want in zip(weights, reference_weights):
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_tram_with_gradient_accumulation_matches_closed_form(variant):
    """θ_{t-1} is the weights before the last update, not before the last
    accumulating micro-step (where the weights did not move and d would be 0)."""
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(model, variant=variant, radius_scale=30.0)
    wrapped.compile(optimizer=keras.optimizers.SGD(1.0, gradient_accumulation_steps=2),
                    loss=cross_entropy())
    history = wrapped.fit(x, y, batch_size=len(x), epochs=6, shuffle=False, verbose=0).history
    weights, divergences = reference.train_tram(
        initial, x, y, 6, 1.0, variant, scale=30.0, accumulate=2
    )
    np.testing.assert_allclose(history["divergence"], divergences, rtol=1e-4, atol=1e-7)
    assert all(d > 0 for d in divergences[2:])
    assert_weights(model, weights)


TRACED_METHODS = {
    **ALL_METHODS,
    "sam": lambda m: keras_tram.SAM(m),
    "asam": lambda m: keras_tram.ASAM(m),
}


def _step_calls(trainer, x, y):
    """How often `fit` (3 epochs, then 3 more) runs `trainer.train_step`'s
    Python: each trace on TensorFlow and JAX, each batch on torch."""
    trainer.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    calls = []
    step = trainer.train_step
    trainer.train_step = lambda *args, **kwargs: calls.append(1) or step(*args, **kwargs)
    counts = []
    for _ in range(2):
        trainer.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        counts.append(len(calls))
    return counts


@pytest.mark.parametrize("name", sorted(TRACED_METHODS))
def test_the_step_is_traced_once(name):
    """Same-shaped batches trace the step as often as Keras traces a plain
    model's (TensorFlow: twice, the first call creating variables; JAX: once),
    and never again: nothing the method keeps between steps reaches the step
    as a Python value. Torch runs the step eagerly: once per batch. With
    `perturbation_every`, JAX makes one step function per kind of step
    (full, in between), each traced once."""
    x, y, _ = make_data()
    plain = _step_calls(make_mlp()[0], x, y)
    model, _ = make_mlp(dropout=0.2)
    calls = _step_calls(TRACED_METHODS[name](model), x, y)
    assert plain == ([6, 12] if BACKEND == "torch" else [plain[0]] * 2)
    functions = 2 if BACKEND == "jax" and name.endswith("_every_2") else 1
    assert calls == (plain if BACKEND == "torch" else [count * functions for count in plain])
