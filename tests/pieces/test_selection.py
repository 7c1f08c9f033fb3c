"""`perturb=`: which weights the perturbation moves, against NumPy closed
forms, by name, callable or list, and through `.keras` files."""

import keras
import numpy as np
import pytest

import keras_tram

import reference
from support import assert_weights
from support import batches
from support import cross_entropy
from support import epoch_means
from support import EXECUTION_MODES
from support import fit_in_batches
from support import LEARNING_RATE
from support import make_data
from support import make_mlp


def test_a_callable_selection_round_trips_through_a_keras_file(tmp_path):
    model, _ = make_mlp()
    wrapped = keras_tram.SAM(model, perturb=_kernels)
    wrapped.compile(optimizer="sgd", loss=cross_entropy())
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"_kernels": _kernels})
    assert loaded._algorithm.perturbation.perturbed == (0, 2)


def _kernels(variable):
    return variable.name == "kernel"


SELECTIONS = {
    # perturb=, the positions of [W1, b1, W2, b2] it selects
    "no_bias_norm": ("no_bias_norm", [0, 2]),
    "callable": (lambda v: v.name == "bias", [1, 3]),
    "variables": (None, [0]),  # the first kernel, as a variable
    "paths": (["dense_1/kernel", "dense_1/bias"], [2, 3]),
}


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("method", ["sam", "asam"])
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_perturb_selects_the_weights_of_the_closed_form(name, method, mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    perturb, selected = SELECTIONS[name]
    if perturb is None:
        perturb = [model.trainable_variables[0]]
    wrapped = {
        "sam": lambda: keras_tram.SAM(model, rho=0.3, perturb=perturb),
        "asam": lambda: keras_tram.ASAM(model, rho=0.5, eta=0.1, perturb=perturb),
    }[method]()
    assert wrapped._algorithm.perturbation.perturbed == tuple(selected)
    history = fit_in_batches(wrapped, x, y, mode=mode)
    epsilon = {
        "sam": lambda g, w: reference.sam_epsilon(g, w, 0.3),
        "asam": lambda g, w: reference.asam_epsilon(g, w, 0.5, 0.1),
    }[method]
    expected, grad_norms = reference.train_sgd(
        initial, batches(x, y), reference.selected_epsilon(epsilon, selected), LEARNING_RATE
    )
    assert_weights(model, expected)
    # Every weight still counts in the logged (clean) gradient norm.
    np.testing.assert_allclose(history["grad_norm"], epoch_means(grad_norms), rtol=1e-5)


def _normalized_model():
    inputs = keras.Input((6, 4))
    h = keras.layers.Dense(4, name="dense")(inputs)
    h = keras.layers.LayerNormalization(name="layer_norm")(h)
    h = keras.layers.GroupNormalization(2, name="group_norm")(h)
    h = keras.layers.BatchNormalization(name="batch_norm")(h)
    h = keras.layers.Conv1D(4, 3, name="conv")(h)
    h = RMSNormalization(name="rms_norm")(h)
    h = keras.layers.EinsumDense("btd,dk->btk", (None, 3), bias_axes="k", name="einsum")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(3, use_bias=False, name="head")(h)
    return keras.Model(inputs, outputs)


class _RMSNorm(keras.layers.Layer):
    """`keras.layers.RMSNormalization` (Keras 3.9 and later) on older Keras:
    a normalization by its name, with one `scale`."""

    def build(self, shape):
        self.scale = self.add_weight(shape=shape[-1:], initializer="ones", name="scale")

    def call(self, x):
        square = keras.ops.mean(keras.ops.square(x), axis=-1, keepdims=True)
        return x * keras.ops.rsqrt(square + 1e-6) * self.scale


RMSNormalization = getattr(keras.layers, "RMSNormalization", _RMSNorm)


class Hub(keras.layers.Layer):
    """A layer whose own normalization class is named as keras-hub's are."""

    def build(self, shape):
        self.scale = self.add_weight(shape=shape[-1:], name="scale")


class GemmaRMSNorm(Hub):
    pass


def test_named_selections_find_biases_and_normalization_weights():
    model = _normalized_model()
    paths = lambda perturb: [  # noqa: E731
        v.path for v in keras_tram.selection.selected(model, perturb)
    ]
    assert paths("no_bias_norm") == ["dense/kernel", "conv/kernel", "einsum/kernel", "head/kernel"]
    assert paths("norm_only") == [
        "layer_norm/gamma", "layer_norm/beta", "group_norm/gamma", "group_norm/beta",
        "batch_norm/gamma", "batch_norm/beta", "rms_norm/scale",
    ]
    assert len(paths("all")) == len(model.trainable_variables)
    layers = [GemmaRMSNorm(), Hub()]
    for layer in layers:
        layer.build((None, 2))
    assert keras_tram.selection.is_normalization(layers[0])
    assert not keras_tram.selection.is_normalization(layers[1])


def test_norm_only_is_sam_on():
    """`perturb="norm_only"`: the kernels do not move in the perturbed pass,
    so with a linear model whose only normalization weight is a scale, ε is
    on that scale alone, with the SAM radius in full."""
    model = _normalized_model()
    wrapped = keras_tram.SAM(model, rho=0.2, perturb="norm_only")
    selected = wrapped._algorithm.perturbation.perturbed
    norms = [i for i, v in enumerate(model.trainable_variables)
             if v.path.split("/")[-2].endswith("norm")]
    assert selected == tuple(norms)
    grads = [np.full(v.shape, float(i + 1), "float32") for i, v in enumerate(model.trainable_variables)]
    weights = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    epsilon = wrapped.geometry.perturbation([grads[i] for i in selected],
                                            [weights[i] for i in selected], 0.2)
    expected = reference.sam_epsilon([grads[i].astype("float64") for i in selected], None, 0.2)
    for e, want in zip(epsilon, expected):
        np.testing.assert_allclose(np.asarray(e), want, rtol=1e-6)


def test_a_selection_from_another_model_is_an_error():
    model, _ = make_mlp()
    other, _ = make_mlp()
    other_variable = keras.Variable(np.zeros(3), name="kernel")
    with pytest.raises(ValueError, match="`perturb`"):
        keras_tram.SAM(model, perturb=[other_variable])
    del other
