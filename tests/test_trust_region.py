"""TRAM, FSAM and the trust-region baselines against NumPy closed forms."""

import json

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import cross_entropy
from conftest import make_data
from conftest import make_mlp

import keras_tram
import reference

STEPS = 4


def _fit_full_batch(wrapped, x, y, steps=STEPS, learning_rate=1.0, sample_weight=None):
    wrapped.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=cross_entropy())
    return wrapped.fit(
        x, y, sample_weight=sample_weight, batch_size=len(x), epochs=steps,
        shuffle=False, verbose=0,
    ).history


def _assert_weights(model, expected, atol=1e-5):
    for actual, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(actual, want, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_divergence_on_a_fraction_of_the_batch_matches_closed_form(variant):
    """`divergence_batch_fraction=0.3`: d is the KL on the first ceil(0.3 · 16) = 5
    examples, and the step is TRAM's with that radius."""
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = _fit_full_batch(
        keras_tram.TRAM(model, variant=variant, radius_scale=30.0,
                        divergence_batch_fraction=0.3), x, y,
    )
    expected, divergences = reference.train_tram(
        initial, x, y, STEPS, 1.0, variant, scale=30.0, fraction=0.3
    )
    full = reference.train_tram(initial, x, y, STEPS, 1.0, variant, scale=30.0)[1]
    assert not np.allclose(divergences[1:], full[1:], rtol=1e-2)  # a different estimate
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    _assert_weights(model, expected)


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
@pytest.mark.parametrize("scale, max_radius", [(1.0, None), (30.0, None), (30.0, 0.01)])
def test_tram_weight_references_match_closed_form(variant, scale, max_radius):
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = _fit_full_batch(
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
    _assert_weights(model, expected)


def test_fsam_matches_closed_form():
    model, initial = make_mlp()
    x, y, _ = make_data()
    _fit_full_batch(keras_tram.FSAM(model, rho=0.3, eta=2.0), x, y, learning_rate=0.2)
    batches = [(x, y, None)] * STEPS
    expected, _ = reference.train_sgd(
        initial, batches, lambda g, w: reference.fsam_epsilon(g, w, 0.3, 2.0), 0.2
    )
    _assert_weights(model, expected)


@pytest.mark.parametrize("method", ["trpo", "mesa"])
def test_penalties_match_closed_form(method):
    model, initial = make_mlp()
    x, y, _ = make_data()
    if method == "trpo":
        wrapped, decay = keras_tram.TRPO(model, weight=2.0), 0.0
    else:
        wrapped, decay = keras_tram.MESA(model, decay=0.5, weight=2.0), 0.5
    history = _fit_full_batch(wrapped, x, y)
    expected, divergences = reference.train_penalty(initial, x, y, STEPS, 1.0, 2.0, decay)
    assert divergences[0] == 0 and min(divergences[1:]) > 1e-4
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(
        history["penalty"], 2.0 * np.array(divergences), rtol=2e-3, atol=1e-7
    )
    _assert_weights(model, expected)


def test_input_noise_update_matches_closed_form_given_the_radius():
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = _fit_full_batch(
        keras_tram.TRAM(model, variant="input_noise", noise_stddev=0.3), x, y, steps=1
    )
    radius = history["radius"][0]
    assert radius > 0
    expected, _ = reference.train_sgd(
        initial, [(x, y, None)], lambda g, w: reference.asam_epsilon(g, w, radius, 0.0), 1.0
    )
    _assert_weights(model, expected)


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
        history = _fit_full_batch(build(make_mlp()[0], stddev), x, y, steps=1)
        divergences.append(history["divergence"][0])
    assert divergences[0] == 0
    assert 0 < divergences[1] < divergences[2] < divergences[3]


def test_noise_is_fresh_each_step_and_reproducible():
    x, y, _ = make_data()
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        model = make_mlp()[0]
        history = _fit_full_batch(
            keras_tram.TRAM(model, variant="input_noise", noise_stddev=0.3), x, y,
            learning_rate=0.0,
        )
        runs.append(history["divergence"])
    # Same weights every step (lr 0), so only the noise changes d.
    assert len(set(runs[0])) == STEPS
    np.testing.assert_array_equal(runs[0], runs[1])


def test_r3f_with_zero_weight_is_plain_sgd():
    model, initial = make_mlp()
    x, y, _ = make_data()
    _fit_full_batch(keras_tram.R3F(model, noise_stddev=0.5, weight=0.0), x, y)
    expected = [np.array(w, np.float64) for w in initial]
    for _ in range(STEPS):
        _, grads = reference.mlp_loss_and_grads(expected, x, y)
        expected = [w - g for w, g in zip(expected, grads)]
    _assert_weights(model, expected)


def test_tram_fisher_without_noise_is_fsam():
    x, y, _ = make_data()
    fisher_model, _ = make_mlp()
    _fit_full_batch(
        keras_tram.TRAM(fisher_model, variant="fisher", noise_stddev=0.0, rho=0.3, eta=2.0),
        x, y, learning_rate=0.2,
    )
    fsam_model, _ = make_mlp()
    _fit_full_batch(keras_tram.FSAM(fsam_model, rho=0.3, eta=2.0), x, y, learning_rate=0.2)
    _assert_weights(fisher_model, fsam_model.get_weights(), atol=1e-6)
    noised_model, _ = make_mlp()
    _fit_full_batch(
        keras_tram.TRAM(noised_model, variant="fisher", noise_stddev=0.5, rho=0.3, eta=2.0),
        x, y, learning_rate=0.2,
    )
    assert not np.allclose(noised_model.get_weights()[0], fsam_model.get_weights()[0])


def _dropout_batchnorm_model():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dropout(0.5),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda m: keras_tram.TRAM(m, variant="previous_step"),
        lambda m: keras_tram.TRAM(m, variant="pretrained"),
        lambda m: keras_tram.TRPO(m),
        lambda m: keras_tram.MESA(m, decay=0.9),
    ],
    ids=["tram_previous_step", "tram_pretrained", "trpo", "mesa"],
)
def test_divergence_is_zero_for_identical_weights_with_dropout_and_batchnorm(build):
    x, y, _ = make_data()
    # With a zero learning rate the weights never move: every reference equals
    # the current weights. The first step's d is exactly 0 (the copy was just
    # taken); later steps measure it, and other dropout masks or BatchNorm
    # modes would make it of order 0.1 instead of a rounding error.
    history = _fit_full_batch(build(_dropout_batchnorm_model()), x, y, learning_rate=0.0)
    assert history["divergence"][0] == 0.0
    assert max(history["divergence"]) < 1e-6


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_divergence_is_measured_again_once_the_weights_move(variant):
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(_dropout_batchnorm_model(), variant=variant)
    first = _fit_full_batch(wrapped, x, y, steps=2, learning_rate=0.5)["divergence"]
    assert first[0] == 0.0 and first[1] > 1e-4
    # The reference is not the weights when the next `fit` starts either.
    again = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert again.history["divergence"][0] > 1e-4


def test_weights_changed_after_the_copy_is_taken_are_measured():
    x, y, _ = make_data()
    model = _dropout_batchnorm_model()
    wrapped = keras_tram.TRAM(model, variant="pretrained")
    unmoved = _fit_full_batch(wrapped, x, y, steps=0)  # takes the copy, trains nothing
    assert unmoved == {}
    model.set_weights([w + 0.1 for w in model.get_weights()])
    history = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert history.history["divergence"][0] > 1e-4


class _SameWeights(keras_tram.trust_region.Reference):
    """The current weights through a separate forward pass, with no shortcut."""

    def predictions(self, step, weights):
        return step.forward(weights)


@pytest.mark.parametrize("learning_rate", [0.0, 0.5])
def test_reference_pass_sees_the_clean_pass_masks_and_batchnorm_mode(learning_rate):
    x, y, _ = make_data()
    wrapped = keras_tram.SharpnessAware(
        _dropout_batchnorm_model(),
        keras_tram.geometry.Euclidean(),
        keras_tram.radius.TrustRegion(_SameWeights()),
    )
    history = _fit_full_batch(wrapped, x, y, learning_rate=learning_rate)
    # Other dropout masks, or BatchNorm in inference mode, give d of order 0.1;
    # what is left is the rounding of two separately compiled passes.
    assert max(history["divergence"]) < 1e-6


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
        history = _fit_full_batch(
            keras_tram.TRAM(model, variant="pretrained"), inputs, y, sample_weight=mask
        )
        results.append((history["divergence"], model.get_weights()))
    assert results[0][0][1] > 0
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-9)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "symmetric_kl"])
@pytest.mark.parametrize("weighted", [False, True])
def test_divergence_closed_form(kind, weighted):
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(2, 3, 5, 7))
    w = (rng.uniform(size=(3, 5)) > 0.3).astype("float32") if weighted else None
    forward = lambda a, b: reference.kl(a.reshape(-1, 7), b.reshape(-1, 7),
                                        None if w is None else w.reshape(-1))
    expected = {
        "kl": forward(p, q), "reverse_kl": forward(q, p),
        "symmetric_kl": forward(p, q) + forward(q, p),
    }[kind]
    actual = keras_tram.trust_region.divergence(
        p.astype("float32"), q.astype("float32"), kind, w
    )
    np.testing.assert_allclose(float(actual), expected, rtol=1e-5)
    probabilities = keras_tram.trust_region.divergence(
        keras.ops.softmax(p.astype("float32")), keras.ops.softmax(q.astype("float32")),
        kind, w, from_logits=False,
    )
    np.testing.assert_allclose(float(probabilities), expected, rtol=1e-4)


def test_dict_outputs_use_the_logits_entry():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    logits = keras.layers.Dense(3)(hidden)
    model = keras.Model(inputs, {"logits": logits, "features": hidden})
    wrapped = keras_tram.TRAM(model, variant="pretrained")
    wrapped.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss={"logits": cross_entropy(), "features": None},
    )
    x, y, _ = make_data()
    history = wrapped.fit(x, {"logits": y}, batch_size=16, epochs=3, verbose=0)
    assert history.history["divergence"][0] == 0 < history.history["divergence"][2]


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


def test_asam_with_a_penalty_composes_without_new_code():
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.SharpnessAware(
        model,
        geometry=keras_tram.geometry.Adaptive(0.0),
        radius=keras_tram.radius.Constant(0.5),
        penalty=keras_tram.penalty.Penalty(keras_tram.trust_region.PreviousWeights(), 2.0),
    )
    history = _fit_full_batch(wrapped, x, y, steps=2, learning_rate=0.5)
    assert sorted(history) == [
        "divergence", "grad_norm", "loss", "penalty", "radius", "skipped_steps"
    ]
    # Closed form: ASAM on L + 2·KL(θ_{t-1} ‖ θ), full batch.
    weights = [np.array(w, np.float64) for w in initial]
    previous = weights
    for _ in range(2):
        ref = reference.mlp_logits(previous, x)

        def grads_at(w, ref=ref):
            task = reference.mlp_loss_and_grads(w, x, y)[1]
            return [g + 2.0 * p for g, p in zip(task, reference.kl_grads(w, x, ref))]

        g = grads_at(weights)
        eps = reference.asam_epsilon(g, weights, 0.5, 0.0)
        descent = grads_at([w + e for w, e in zip(weights, eps)])
        previous, weights = weights, [w - 0.5 * d for w, d in zip(weights, descent)]
    _assert_weights(model, weights)


ALL_METHODS = {
    "tram_previous_step": lambda m: keras_tram.TRAM(m, variant="previous_step"),
    "tram_pretrained": lambda m: keras_tram.TRAM(m, variant="pretrained", radius_scale=50.0),
    "tram_input_noise": lambda m: keras_tram.TRAM(m, variant="input_noise", noise_stddev=0.2),
    "tram_fisher": lambda m: keras_tram.TRAM(m, variant="fisher", noise_stddev=0.2),
    "fsam": lambda m: keras_tram.FSAM(m),
    "trpo": lambda m: keras_tram.TRPO(m, weight=0.5),
    "r3f": lambda m: keras_tram.R3F(m, divergence="symmetric_kl"),
    "mesa": lambda m: keras_tram.MESA(m, decay=0.9, weight=0.5),
}


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_keras_file_round_trip_and_resumed_training(name, tmp_path):
    x, y, _ = make_data()
    model, _ = make_mlp(dropout=0.2)
    wrapped = ALL_METHODS[name](model)
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    wrapped.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(wrapped)
    assert json.dumps(loaded.get_config()) == json.dumps(wrapped.get_config())
    for a, b in zip(loaded.non_trainable_variables, wrapped.non_trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    histories = [
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        for m in (wrapped, loaded)
    ]
    assert histories[0] == histories[1]
    for a, b in zip(loaded.model.get_weights(), wrapped.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


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


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_every_execution_mode_gives_the_same_weights(name):
    from conftest import EXECUTION_MODES

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


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_unbuilt_subclassed_model(variant):
    _, initial = make_mlp()
    x, y, _ = make_data()
    model = SubclassedMLP(initial)
    assert not model.built
    history = _fit_full_batch(keras_tram.TRAM(model, variant=variant), x, y)
    expected, divergences = reference.train_tram(initial, x, y, STEPS, 1.0, variant)
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    _assert_weights(model, expected)


def _state(wrapped):
    """Everything a step may change: weights, the wrapper's references and
    seeds, and the optimizer's slots and step counter."""
    variables = (wrapped.model.weights + wrapped.non_trainable_variables
                 + wrapped.optimizer.variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_a_non_finite_batch_changes_nothing_and_is_counted(name):
    """Training through a NaN batch ends exactly where training without it does:
    weights, reference copies, noise seeds and optimizer state."""
    x, y, _ = make_data()
    poisoned = x.copy()
    poisoned[8:12, 0] = np.nan  # the third of four batches
    runs = []
    for inputs, labels in ((poisoned, y), (np.delete(x, np.s_[8:12], 0),
                                           np.delete(y, np.s_[8:12]))):
        keras.utils.set_random_seed(0)  # the same noise seeds in both runs
        model, _ = make_mlp()
        wrapped = ALL_METHODS[name](model)
        wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
        history = wrapped.fit(inputs, labels, batch_size=4, epochs=2, shuffle=False, verbose=0)
        runs.append((history.history, _state(wrapped)))
    (poisoned_history, poisoned_state), (clean_history, clean_state) = runs
    assert poisoned_history["skipped_steps"] == [1.0, 1.0]
    assert clean_history["skipped_steps"] == [0.0, 0.0]
    for name_, values in poisoned_history.items():
        if name_ not in ("loss", "accuracy"):
            assert np.isfinite(values).all(), (name_, values)
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


class _Interrupt(keras.callbacks.Callback):
    """Stops the process-like run at the end of an epoch, as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def _fresh(name):
    """The same new, compiled model every time: seeds, weights and dropout."""
    keras.utils.set_random_seed(0)
    model, _ = make_mlp(dropout=0.2)
    wrapped = ALL_METHODS[name](model)
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    return wrapped


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
    _assert_weights(model, weights)


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
    trainer.train_step = lambda *args: calls.append(1) or step(*args)
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
    as a Python value. Torch runs the step eagerly: once per batch."""
    x, y, _ = make_data()
    plain = _step_calls(make_mlp()[0], x, y)
    model, _ = make_mlp(dropout=0.2)
    calls = _step_calls(TRACED_METHODS[name](model), x, y)
    assert calls == plain == ([6, 12] if BACKEND == "torch" else [plain[0]] * 2)
