"""Embedding tables perturbed on the rows a batch looked up (`_perturbed.py`):
the same numbers as a dense perturbation, checked against a NumPy closed form
of a model with an embedding, in every execution mode of every backend."""

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram._ops import backend as _backend
from keras_tram._step import perturbation as _perturbed
from keras_tram.pieces import geometry

from support import assert_weights
from support import BACKEND
from support import cross_entropy
from support import EXECUTION_MODES

VOCABULARY, WIDTH, LENGTH, CLASSES = 40, 3, 5, 3
LEARNING_RATE = 0.5


def make_model(seed=2):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        keras.layers.Embedding(VOCABULARY, WIDTH, embeddings_initializer="normal",
                               name="embedding"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES, kernel_initializer="normal", name="head"),
    ])
    return model, [np.array(w, dtype=np.float64) for w in model.get_weights()]


def make_data(seed=3):
    rng = np.random.default_rng(seed)
    # Ids from the first half of the table only, some repeated within a
    # sequence and across sequences: rows 20-39 are never looked up.
    x = rng.integers(0, VOCABULARY // 2, (8, LENGTH)).astype("int32")
    return x, rng.integers(0, CLASSES, 8)


def loss_and_grads(weights, x, y):
    """Mean cross-entropy of `softmax(mean_t E[x_t] W + b)` and its gradients."""
    table, kernel, bias = weights
    h = table[x].mean(axis=1)
    z = h @ kernel + bias
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(CLASSES)[y]
    loss = -np.log((p * onehot).sum(axis=1)).mean()
    dz = (p - onehot) / len(x)
    dh = dz @ kernel.T
    dtable = np.zeros_like(table)
    np.add.at(dtable, x, np.repeat(dh[:, None, :] / LENGTH, LENGTH, axis=1))
    return loss, [dtable, h.T @ dz, dz.sum(axis=0)]


def norm(tensors):
    return np.sqrt(sum((t**2).sum() for t in tensors))


EPSILONS = {  # name -> (wrapper, ε(g, θ) in NumPy)
    "sam": (lambda m, **kw: keras_tram.SAM(m, rho=0.3, **kw),
            lambda g, w: [0.3 * gi / norm(g) for gi in g]),
    "asam": (lambda m, **kw: keras_tram.ASAM(m, rho=0.5, eta=0.01, **kw),
             lambda g, w: [0.5 * (np.abs(wi) + 0.01) ** 2 * gi
                           / norm([(np.abs(wj) + 0.01) * gj for wj, gj in zip(w, g)])
                           for wi, gi in zip(w, g)]),
    "fsam": (lambda m, **kw: keras_tram.FSAM(m, rho=0.2, eta=0.5, **kw),
             lambda g, w: [0.2 * gi / (1 + 0.5 * gi**2)
                           / np.sqrt(sum((gj**2 / (1 + 0.5 * gj**2)).sum() for gj in g))
                           for gi in g]),
}


def train(weights, x, y, steps, epsilon, selected=(0, 1, 2)):
    for _ in range(steps):
        _, grads = loss_and_grads(weights, x, y)
        parts = epsilon([grads[i] for i in selected], [weights[i] for i in selected])
        perturbed = list(weights)
        for i, e in zip(selected, parts):
            perturbed[i] = weights[i] + e
        _, descent = loss_and_grads(perturbed, x, y)
        weights = [w - LEARNING_RATE * g for w, g in zip(weights, descent)]
    return weights


def counting_touched_rows(monkeypatch):
    calls = []
    original = _perturbed.touched_rows

    def counted(grad):
        calls.append(tuple(grad.shape))
        return original(grad)

    monkeypatch.setattr(_perturbed, "touched_rows", counted)
    return calls


@pytest.mark.parametrize("method", sorted(EPSILONS))
@pytest.mark.parametrize("perturb", ["all", "no_bias_norm"])
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_a_table_perturbed_on_its_rows_matches_the_closed_form(method, perturb, mode,
                                                               monkeypatch):
    calls = counting_touched_rows(monkeypatch)
    model, initial = make_model()
    x, y = make_data()
    make, epsilon = EPSILONS[method]
    wrapped = make(model, perturb=perturb)
    assert wrapped._algorithm.perturbation.tables == (0,)
    wrapped.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy(),
                    **EXECUTION_MODES[mode])
    wrapped.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    selected = (0, 1, 2) if perturb == "all" else (0, 1)
    expected = train(initial, x, y, 3, epsilon, selected)
    assert_weights(model, expected)
    # The rows no batch looked up never moved, in the step or after it.
    np.testing.assert_array_equal(model.get_weights()[0][20:], initial[0][20:].astype("float32"))
    # Row-wise where shapes may depend on values: torch, and TensorFlow
    # without XLA; dense under XLA (JAX, `jit_compile`).
    row_wise = BACKEND == "torch" or (BACKEND == "tensorflow" and mode != "xla")
    assert bool(calls) == row_wise
    assert all(shape == (VOCABULARY, WIDTH) for shape in calls)


@pytest.mark.parametrize("name", ["euclidean", "adaptive", "fisher"])
def test_row_wise_and_dense_perturbations_are_the_same(name):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(30, 4)).astype("float32")
    grad = np.zeros_like(table)
    grad[[2, 7, 8, 21]] = rng.normal(size=(4, 4))
    grad[11, 3] = -1e-30  # one element of a row is enough to touch it
    kernel, kernel_grad = (rng.normal(size=(4, 2)).astype("float32") for _ in range(2))
    made = {"euclidean": geometry.Euclidean(), "adaptive": geometry.Adaptive(0.1),
            "fisher": geometry.Fisher(0.3)}[name]
    tensors = lambda arrays: [keras.ops.convert_to_tensor(a) for a in arrays]  # noqa: E731
    radius = keras.ops.convert_to_tensor(0.4)
    perturbation = _perturbed.Perturbation(None, tables=(0,), relative=True)  # ‖ε‖ too
    row_wise, row_norm = perturbation.apply(
        made, tensors([grad, kernel_grad]), tensors([table, kernel]), radius, row_wise=True)
    dense, dense_norm = perturbation.apply(
        made, tensors([grad, kernel_grad]), tensors([table, kernel]), radius, row_wise=False)
    np.testing.assert_allclose(float(row_norm), float(dense_norm), rtol=1e-6)
    assert len(row_wise) == len(dense) == 2
    for a, b in zip(row_wise, dense):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-6, atol=0)
    touched = [2, 7, 8, 11, 21]
    untouched = [i for i in range(30) if i not in touched]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(row_wise[0])[untouched],
                                  table[untouched])
    assert not np.array_equal(keras.ops.convert_to_numpy(row_wise[0])[touched[:4]],
                              table[touched[:4]])


def test_a_geometry_that_moves_untouched_rows_stays_dense(monkeypatch):
    calls = counting_touched_rows(monkeypatch)
    table = np.ones((6, 2), "float32")
    grad = np.zeros_like(table)
    grad[1] = 1.0
    perturbation = _perturbed.Perturbation(None, tables=(0,))
    made = geometry.Released()  # ε = r θ² / ‖θ g‖ on every element
    assert not made.zero_with_gradient and not geometry.Geometry.zero_with_gradient
    moved, _ = perturbation.apply(made, [keras.ops.convert_to_tensor(grad)],
                                  [keras.ops.convert_to_tensor(table)],
                                  keras.ops.convert_to_tensor(0.5), row_wise=True)
    assert not calls
    assert np.all(keras.ops.convert_to_numpy(moved[0]) > 1.0)


def test_the_tables_are_the_trainable_embeddings():
    import keras_hub

    inputs = keras.Input((4,), dtype="int32")
    untied = keras_hub.layers.ReversibleEmbedding(10, 3, tie_weights=False, name="untied")
    tied = keras_hub.layers.ReversibleEmbedding(12, 3, tie_weights=True, name="tied")
    plain = keras.layers.Embedding(8, 3, name="plain")
    h = untied(inputs) + tied(inputs) + plain(inputs)
    outputs = tied(keras.layers.Dense(3, name="dense")(h), reverse=True)
    model = keras.Model(inputs, outputs)
    paths = [v.path for v in model.trainable_variables]
    found = [paths[i] for i in _perturbed.tables(model)]
    assert sorted(found) == ["plain/embeddings", "tied/embeddings", "untied/embeddings"]
    # Among selected weights, positions are counted in the selection.
    selection = [i for i, p in enumerate(paths) if p != "untied/embeddings"]
    assert sorted(paths[selection[j]] for j in _perturbed.tables(model, selection)) == [
        "plain/embeddings", "tied/embeddings"]
    # With LoRA the table is frozen: nothing to take rows of.
    plain.enable_lora(2)
    paths = [v.path for v in model.trainable_variables]
    assert sorted(paths[i] for i in _perturbed.tables(model)) == [
        "tied/embeddings", "untied/embeddings"]


@pytest.mark.parametrize("touched, row_wise", [(3, True), (4, True), (5, False), (8, False)])
def test_a_table_with_more_than_half_its_rows_touched_is_perturbed_densely(
        touched, row_wise, monkeypatch):
    # (A table that is also the output projection: every row has a gradient.)
    taken = []
    original = _perturbed.Perturbation._apply

    def recorded(self, *args):
        taken.append(bool(args[-1]))
        return original(self, *args)

    monkeypatch.setattr(_perturbed.Perturbation, "_apply", recorded)
    rng = np.random.default_rng(1)
    table = rng.normal(size=(8, 2)).astype("float32")
    grad = np.zeros_like(table)
    grad[:touched] = rng.normal(size=(touched, 2))
    perturbation = _perturbed.Perturbation(None, tables=(0,))
    to = lambda a: [keras.ops.convert_to_tensor(a)]  # noqa: E731
    moved, _ = perturbation.apply(geometry.Euclidean(), to(grad), to(table),
                                  keras.ops.convert_to_tensor(0.5), row_wise=True)
    expected = table + 0.5 * grad / np.sqrt((grad.astype("float64") ** 2).sum())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(moved[0]), expected, rtol=1e-6, atol=1e-7)
    if BACKEND != "jax":  # a JAX `cond` traces both branches
        assert taken == [row_wise]


def test_dynamic_shapes_are_taken_where_the_step_is_not_compiled_by_xla():
    model, _ = make_model()
    model.compile(optimizer="sgd", loss=cross_entropy(), jit_compile=False)
    expected = {"torch": True, "tensorflow": True, "jax": False}[BACKEND]
    assert _backend.dynamic_shapes(model) is expected
    if BACKEND != "torch":
        model.compile(optimizer="sgd", loss=cross_entropy(), jit_compile=True)
        assert _backend.dynamic_shapes(model) is False
