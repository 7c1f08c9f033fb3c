"""Trust-region pieces against closed forms: references, divergences, radii, penalties; their saving and arguments."""

import json

import keras
import numpy as np
import pytest
from conftest import ALL_METHODS
from conftest import assert_weights
from conftest import cross_entropy
from conftest import fit_full_batch
from conftest import make_data
from conftest import make_mlp
from conftest import STEPS

import keras_tram
import reference


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


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
@pytest.mark.parametrize("scale, max_radius", [(1.0, None), (30.0, None), (30.0, 0.01)])
def test_tram_weight_references_match_closed_form(variant, scale, max_radius):
    model, initial = make_mlp()
    x, y, _ = make_data()
    history = fit_full_batch(
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
    assert_weights(model, expected)


def test_fsam_matches_closed_form():
    model, initial = make_mlp()
    x, y, _ = make_data()
    fit_full_batch(keras_tram.FSAM(model, rho=0.3, eta=2.0), x, y, learning_rate=0.2)
    batches = [(x, y, None)] * STEPS
    expected, _ = reference.train_sgd(
        initial, batches, lambda g, w: reference.fsam_epsilon(g, w, 0.3, 2.0), 0.2
    )
    assert_weights(model, expected)


@pytest.mark.parametrize("method", ["trpo", "mesa"])
def test_penalties_match_closed_form(method):
    model, initial = make_mlp()
    x, y, _ = make_data()
    if method == "trpo":
        wrapped, decay = keras_tram.TRPO(model, weight=2.0), 0.0
    else:
        wrapped, decay = keras_tram.MESA(model, decay=0.5, weight=2.0), 0.5
    history = fit_full_batch(wrapped, x, y)
    expected, divergences = reference.train_penalty(initial, x, y, STEPS, 1.0, 2.0, decay)
    assert divergences[0] == 0 and min(divergences[1:]) > 1e-4
    np.testing.assert_allclose(history["divergence"], divergences, rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(
        history["penalty"], 2.0 * np.array(divergences), rtol=2e-3, atol=1e-7
    )
    assert_weights(model, expected)


def test_r3f_with_zero_weight_is_plain_sgd():
    model, initial = make_mlp()
    x, y, _ = make_data()
    fit_full_batch(keras_tram.R3F(model, noise_stddev=0.5, weight=0.0), x, y)
    expected = [np.array(w, np.float64) for w in initial]
    for _ in range(STEPS):
        _, grads = reference.mlp_loss_and_grads(expected, x, y)
        expected = [w - g for w, g in zip(expected, grads)]
    assert_weights(model, expected)


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
    history = fit_full_batch(build(_dropout_batchnorm_model()), x, y, learning_rate=0.0)
    assert history["divergence"][0] == 0.0
    assert max(history["divergence"]) < 1e-6


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_divergence_is_measured_again_once_the_weights_move(variant):
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(_dropout_batchnorm_model(), variant=variant)
    first = fit_full_batch(wrapped, x, y, steps=2, learning_rate=0.5)["divergence"]
    assert first[0] == 0.0 and first[1] > 1e-4
    # The reference is not the weights when the next `fit` starts either.
    again = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert again.history["divergence"][0] > 1e-4


def test_weights_changed_after_the_copy_is_taken_are_measured():
    x, y, _ = make_data()
    model = _dropout_batchnorm_model()
    wrapped = keras_tram.TRAM(model, variant="pretrained")
    unmoved = fit_full_batch(wrapped, x, y, steps=0)  # takes the copy, trains nothing
    assert unmoved == {}
    model.set_weights([w + 0.1 for w in model.get_weights()])
    history = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert history.history["divergence"][0] > 1e-4


class _SameWeights(keras_tram.references.Reference):
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
    history = fit_full_batch(wrapped, x, y, learning_rate=learning_rate)
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
        history = fit_full_batch(
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
    actual = keras_tram.divergences.divergence(
        p.astype("float32"), q.astype("float32"), kind, w
    )
    np.testing.assert_allclose(float(actual), expected, rtol=1e-5)
    probabilities = keras_tram.divergences.divergence(
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


def test_asam_with_a_penalty_composes_without_new_code():
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.SharpnessAware(
        model,
        geometry=keras_tram.geometry.Adaptive(0.0),
        radius=keras_tram.radius.Constant(0.5),
        penalty=keras_tram.penalty.Penalty(keras_tram.references.PreviousWeights(), 2.0),
    )
    history = fit_full_batch(wrapped, x, y, steps=2, learning_rate=0.5)
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
    assert_weights(model, weights)


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


def _float64_kl(z, y):
    z, y = z.astype(np.float64), y.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    log_q = y - y.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize("offset, noise", [(0.0, 0.1), (-80.0, 1e-2), (-80.0, 1e-3)])
def test_the_kl_of_close_language_model_logits_is_accurate(offset, noise):
    # GPT-2's logits sit near -80; two nearby models differ by far less.
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(2, 8, 5000)) * 5 + offset).astype("float32")
    y = (z + rng.normal(size=z.shape) * noise).astype("float32")
    actual = keras.ops.convert_to_numpy(keras_tram.divergences.pointwise_divergence(z, y))
    # float32 logits of this size: log p itself is off by a few 1e-7.
    np.testing.assert_allclose(actual, _float64_kl(z, y), rtol=0, atol=5e-7)


@pytest.mark.parametrize("vocabulary", [6, 2000])
@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "symmetric_kl"])
def test_the_gradient_of_the_divergence_matches_closed_form(kind, vocabulary):
    # What TRPO, R3F and MESA descend: d/dy of KL(softmax(z) ‖ softmax(y)) is
    # softmax(y) − softmax(z), summed over positions / count. A vocabulary of
    # 2,000 is taken in pieces.
    rng = np.random.default_rng(4)
    z, y = rng.normal(size=(2, 3, 4, vocabulary))
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    q = np.exp(y) / np.exp(y).sum(-1, keepdims=True)
    log_ratio = np.log(q) - np.log(p)
    reverse = q * (log_ratio - (q * log_ratio).sum(-1, keepdims=True))  # d KL(q‖p)/dy
    expected = {"kl": q - p, "reverse_kl": reverse, "symmetric_kl": q - p + reverse}[kind] / 12
    grad = _gradient(lambda t: keras_tram.divergences.divergence(z.astype("float32"), t, kind),
                     y.astype("float32"))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def _gradient(fn, x):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(x))
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return tape.gradient(value, x).numpy()
    import torch

    x = torch.tensor(x, requires_grad=True)
    fn(x).backward()
    return x.grad.numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "symmetric_kl"])
def test_the_kl_of_logits_keeps_less_than_one_tensor_of_their_size(kind, dtype):
    """A language model's logits are `(batch, time, vocabulary)`: for GPT-2
    at 8 × 128, 206 MB each. Besides the logits themselves, what the
    divergence keeps alive at once stays under one tensor of their size in
    float32 (it used to be five), bfloat16 logits included."""
    shape = (2, 3, 4096)
    size = int(np.prod(shape)) * 4  # bytes of one float32 tensor of that shape
    rng = np.random.default_rng(0)
    z, y = (keras.ops.convert_to_numpy(keras.ops.cast(rng.normal(size=shape), dtype))
            for _ in range(2))
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        compiled = jax.jit(
            lambda a, b: keras_tram.divergences.divergence(a, b, kind)
        ).lower(z, y).compile()
        assert compiled.memory_analysis().temp_size_in_bytes <= size
    elif backend == "tensorflow":
        import tensorflow as tf

        graph = tf.function(
            lambda a, b: keras_tram.divergences.divergence(a, b, kind)
        ).get_concrete_function(
            tf.TensorSpec(shape, dtype), tf.TensorSpec(shape, dtype)).graph
        sizes = [o.shape.num_elements() * o.dtype.size
                 for op in graph.get_operations() if op.type != "Placeholder"
                 for o in op.outputs]
        assert max(sizes) > size / 16  # the pieces are in the graph
        # Each op's output is at most an eighth: the four a piece keeps alive
        # at once (`z` and `y` of it, `e`, `z − y`), even with the executor
        # running two pieces side by side, stay within one.
        assert max(sizes) <= size / 8
    else:
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        z, y = (torch.from_numpy(t.astype("float32")).to(getattr(torch, dtype)) for t in (z, y))
        inputs = {z.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()}

        class Alive(TorchDispatchMode):
            refs, peak = [], 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (list, tuple)) else [out]:
                    if isinstance(t, torch.Tensor):
                        self.refs.append(weakref.ref(t))
                alive = {r().untyped_storage().data_ptr(): r().untyped_storage().nbytes()
                         for r in self.refs if r() is not None}
                self.peak = max(self.peak, sum(
                    n for ptr, n in alive.items() if ptr not in inputs))
                return out

        with Alive() as alive:
            keras_tram.divergences.divergence(z, y, kind)
        assert alive.peak > size / 16  # the mode saw the pieces
        assert alive.peak <= size
