"""Scheduled radii, parameter selection and GSAM against NumPy closed forms,
ρ = 0 against plain `fit`, and their arguments."""

import json
import types

import keras
import numpy as np
import pytest
from conftest import assert_weights
from conftest import cross_entropy
from conftest import EXECUTION_MODES
from conftest import make_data
from conftest import make_mlp
from conftest import STEPS

import keras_tram
import reference
from keras_tram.pieces import schedule

LEARNING_RATE = 0.2
BATCH = 4  # 16 examples: 4 updates an epoch


def _batches(x, y, epochs=2, batch_size=BATCH):
    return [(x[i:i + batch_size], y[i:i + batch_size], None)
            for _ in range(epochs) for i in range(0, len(x), batch_size)]


def _fit(wrapped, x, y, optimizer=None, epochs=2, mode="graph"):
    wrapped.compile(
        optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy(),
        **EXECUTION_MODES.get(mode, {}),
    )
    return wrapped.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0).history


def _counted(epsilon_fn):
    """`epsilon_fn(t, grads, weights)` as `train_sgd` calls it, `t` the update."""
    calls = []

    def epsilon(grads, weights):
        calls.append(None)
        return epsilon_fn(len(calls) - 1, grads, weights)

    return epsilon


def _epoch_means(values, epochs=2):
    return np.mean(np.reshape(values, (epochs, -1)), axis=1)


# ------------------------------------------------------------- schedules

def _decay():
    return keras.optimizers.schedules.PolynomialDecay(0.4, decay_steps=6, end_learning_rate=0.1)


@pytest.mark.parametrize("method", ["sam", "asam"])
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_scheduled_rho_matches_closed_form(method, mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrap = {"sam": keras_tram.SAM, "asam": lambda m, rho: keras_tram.ASAM(m, rho=rho, eta=0.1)}
    history = _fit(wrap[method](model, rho=_decay()), x, y, mode=mode)
    rhos = [reference.polynomial_decay(0.4, 6, 0.1, t) for t in range(8)]
    epsilon = {
        "sam": lambda t, g, w: reference.sam_epsilon(g, w, rhos[t]),
        "asam": lambda t, g, w: reference.asam_epsilon(g, w, rhos[t], 0.1),
    }[method]
    expected, _ = reference.train_sgd(initial, _batches(x, y), _counted(epsilon), LEARNING_RATE)
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], _epoch_means(rhos), rtol=1e-5)


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_rho_following_the_learning_rate_matches_closed_form(mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    rho = schedule.FollowLearningRate(rho_max=0.5, rho_min=0.1)  # lr_max: the lr at update 0
    lr = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=8)
    history = _fit(keras_tram.SAM(model, rho=rho), x, y, keras.optimizers.SGD(lr), mode=mode)
    rates = [reference.cosine_decay(LEARNING_RATE, 8, t) for t in range(8)]
    rhos = [reference.follow_learning_rate(0.5, 0.1, r, LEARNING_RATE) for r in rates]
    assert rhos[0] == pytest.approx(0.5) and rhos[-1] < 0.12
    expected, _ = reference.train_sgd(
        initial, _batches(x, y), _counted(lambda t, g, w: reference.sam_epsilon(g, w, rhos[t])),
        rates,
    )
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], _epoch_means(rhos), rtol=1e-5)


def test_rho_follows_a_given_lr_range_and_a_loss_scaled_optimizer():
    """Explicit `lr_max`/`lr_min` (a warmup schedule's peak), through a
    `LossScaleOptimizer`, whose learning rate is its inner optimizer's."""
    model, initial = make_mlp()
    x, y, _ = make_data()
    rho = schedule.FollowLearningRate(rho_max=0.3, rho_min=0.05, lr_max=0.4, lr_min=0.1)
    lr = keras.optimizers.schedules.PolynomialDecay(0.4, decay_steps=8, end_learning_rate=0.1)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(lr), initial_scale=64.0)
    history = _fit(keras_tram.SAM(model, rho=rho), x, y, optimizer)
    rates = [reference.polynomial_decay(0.4, 8, 0.1, t) for t in range(8)]
    rhos = [reference.follow_learning_rate(0.3, 0.05, r, 0.4, 0.1) for r in rates]
    expected, _ = reference.train_sgd(
        initial, _batches(x, y), _counted(lambda t, g, w: reference.sam_epsilon(g, w, rhos[t])),
        rates,
    )
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], _epoch_means(rhos), rtol=1e-5)


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_tram_scheduled_radius_scale_and_max_radius_match_closed_form(mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    scale = keras.optimizers.schedules.ExponentialDecay(40.0, decay_steps=1, decay_rate=0.2)
    wrapped = keras_tram.TRAM(model, variant="previous_step", radius_scale=scale,
                              max_radius=schedule.FollowLearningRate(0.02))
    wrapped.compile(optimizer=keras.optimizers.SGD(1.0), loss=cross_entropy(),
                    **EXECUTION_MODES[mode])
    history = wrapped.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0)
    scales = [40.0 * 0.2**t for t in range(STEPS)]
    expected, divergences = reference.train_tram(
        initial, x, y, STEPS, 1.0, "previous_step", scale=scales, max_radius=0.02
    )
    assert_weights(model, expected)
    radii = np.minimum(np.array(scales) * divergences, 0.02)
    assert radii[1] == 0.02 and radii[-1] < 0.02  # capped first, not at the end
    np.testing.assert_allclose(history.history["radius"], radii, rtol=2e-3, atol=1e-7)


def test_a_negative_divergence_is_clipped_to_zero():
    """Rounding can take a KL just below 0; it must not become the radius."""
    radius = keras_tram.radius.TrustRegion(keras_tram.references.PreviousWeights())
    radius.measure = lambda *args, **kwargs: (None, keras.ops.convert_to_tensor(-2e-9))
    step = types.SimpleNamespace(
        weights=[], y_pred=None, perturbation_sum=None, at=schedule.At()
    )
    assert float(radius(step)) == 0.0
    value, statistics = radius.with_statistics(step)  # what a step logs with it
    assert float(value) == 0.0 and float(statistics["divergence"]) == 0.0


@pytest.mark.parametrize("make", [
    lambda m: keras_tram.SAM(m, rho=_decay()),
    lambda m: keras_tram.ASAM(m, rho=schedule.FollowLearningRate(0.3, 0.1, lr_max=0.5)),
    lambda m: keras_tram.GSAM(m, alpha=0.2),
    lambda m: keras_tram.TRAM(m, radius_scale=_decay(), max_radius=schedule.FollowLearningRate(0.1)),
    lambda m: keras_tram.TRAM(m, variant="fisher", rho=_decay()),
    lambda m: keras_tram.SAM(m, perturb="no_bias_norm"),
    lambda m: keras_tram.SAM(m, perturb=["dense/kernel"]),
], ids=["sam-decay", "asam-follow", "gsam", "tram-schedules", "tram-fisher", "perturb-name",
        "perturb-paths"])
def test_config_and_keras_file_round_trip(make, tmp_path):
    model, _ = make_mlp()
    x, y, _ = make_data()
    wrapped = make(model)
    _fit(wrapped, x, y, epochs=1)
    config = wrapped.get_config()
    json.dumps(config)  # serializable as it is
    own = lambda config: {k: v for k, v in config.items() if k != "model"}  # noqa: E731
    rebuilt = type(wrapped).from_config(config)
    assert own(rebuilt.get_config()) == own(config)
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert own(loaded.get_config()) == own(config)
    assert loaded._algorithm.perturbation.perturbed == wrapped._algorithm.perturbation.perturbed
    assert repr(loaded.radius) == repr(wrapped.radius)


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


# ------------------------------------------------------------- selection

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
    history = _fit(wrapped, x, y, mode=mode)
    epsilon = {
        "sam": lambda g, w: reference.sam_epsilon(g, w, 0.3),
        "asam": lambda g, w: reference.asam_epsilon(g, w, 0.5, 0.1),
    }[method]
    expected, grad_norms = reference.train_sgd(
        initial, _batches(x, y), reference.selected_epsilon(epsilon, selected), LEARNING_RATE
    )
    assert_weights(model, expected)
    # Every weight still counts in the logged (clean) gradient norm.
    np.testing.assert_allclose(history["grad_norm"], _epoch_means(grad_norms), rtol=1e-5)


def _normalized_model():
    inputs = keras.Input((6, 4))
    h = keras.layers.Dense(4, name="dense")(inputs)
    h = keras.layers.LayerNormalization(name="layer_norm")(h)
    h = keras.layers.GroupNormalization(2, name="group_norm")(h)
    h = keras.layers.BatchNormalization(name="batch_norm")(h)
    h = keras.layers.Conv1D(4, 3, name="conv")(h)
    h = keras.layers.RMSNormalization(name="rms_norm")(h)
    h = keras.layers.EinsumDense("btd,dk->btk", (None, 3), bias_axes="k", name="einsum")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(3, use_bias=False, name="head")(h)
    return keras.Model(inputs, outputs)


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


# ---------------------------------------------------------------- GSAM

@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_gsam_matches_closed_form(mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    lr = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=8)
    rho = schedule.FollowLearningRate(rho_max=0.4, rho_min=0.1)
    history = _fit(keras_tram.GSAM(model, rho=rho, alpha=0.5), x, y,
                   keras.optimizers.SGD(lr), mode=mode)
    rates = [reference.cosine_decay(LEARNING_RATE, 8, t) for t in range(8)]
    rhos = [reference.follow_learning_rate(0.4, 0.1, r, LEARNING_RATE) for r in rates]
    expected = reference.train_gsam(initial, _batches(x, y), rhos, 0.5, rates)
    sam, _ = reference.train_sgd(
        initial, _batches(x, y), _counted(lambda t, g, w: reference.sam_epsilon(g, w, rhos[t])),
        rates,
    )
    assert max(np.abs(a - b).max() for a, b in zip(expected, sam)) > 1e-3  # not SAM
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], _epoch_means(rhos), rtol=1e-5)


def test_gsam_defaults_follow_the_learning_rate():
    model, _ = make_mlp()
    wrapped = keras_tram.GSAM(model)
    assert wrapped.alpha == 0.4
    assert wrapped.rho.get_config() == {"rho_max": 0.05, "rho_min": 0.0, "lr_max": None,
                                        "lr_min": 0.0}
    x, y, _ = make_data()
    history = _fit(wrapped, x, y, epochs=1)  # a constant learning rate: ρ = ρ_max
    np.testing.assert_allclose(history["radius"], [0.05], rtol=1e-6)
    assert keras_tram.wrap(model, "gsam").alpha == 0.4


def test_gsam_with_alpha_zero_is_sam():
    x, y, _ = make_data()
    results = []
    for make in (lambda m: keras_tram.GSAM(m, rho=0.3, alpha=0.0),
                 lambda m: keras_tram.SAM(m, rho=0.3)):
        model, _ = make_mlp()
        _fit(make(model), x, y)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-7)


# ------------------------------------------------------- ρ = 0 is plain

ZERO_RADIUS = {
    "sam": lambda m: keras_tram.SAM(m, rho=0.0),
    "asam": lambda m: keras_tram.ASAM(m, rho=0.0, eta=0.01),
    "fsam": lambda m: keras_tram.FSAM(m, rho=0.0),
    "gsam": lambda m: keras_tram.GSAM(m, rho=0.0),
    "tram-previous_step": lambda m: keras_tram.TRAM(m, radius_scale=0.0),
    "tram-pretrained": lambda m: keras_tram.TRAM(m, variant="pretrained", radius_scale=0.0),
    "tram-input_noise": lambda m: keras_tram.TRAM(m, variant="input_noise", radius_scale=0.0),
}


@pytest.mark.parametrize("method", sorted(ZERO_RADIUS))
def test_zero_radius_is_the_plain_optimizer(method):
    x, y, _ = make_data()
    results = []
    for make in (ZERO_RADIUS[method], lambda m: m):
        model, _ = make_mlp()
        model = make(model)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=cross_entropy())
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        results.append(getattr(model, "model", model).get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)


# ------------------------------------------------------------- bad input

BAD = [
    (lambda m: keras_tram.SAM(m, rho="cosine"), TypeError, "`rho`"),
    (lambda m: keras_tram.SAM(m, rho=lambda step: 0.1), TypeError, "`rho`"),
    (lambda m: keras_tram.SAM(m, rho=-0.1), ValueError, "`rho`"),
    (lambda m: keras_tram.TRAM(m, radius_scale=[1.0]), TypeError, "`radius_scale`"),
    (lambda m: keras_tram.TRAM(m, max_radius=keras.optimizers.Adam()), TypeError, "`max_radius`"),
    (lambda m: schedule.FollowLearningRate(rho_max=0.1, rho_min=0.2), ValueError, "`rho_min`"),
    (lambda m: schedule.FollowLearningRate(0.1, lr_max=0.1, lr_min=0.2), ValueError, "`lr_min`"),
    (lambda m: schedule.FollowLearningRate(math_nan()), ValueError, "`rho_max`"),
    (lambda m: keras_tram.SAM(m, perturb="no_bias"), ValueError, "`perturb`"),
    (lambda m: keras_tram.SAM(m, perturb=3), TypeError, "`perturb`"),
    (lambda m: keras_tram.SAM(m, perturb="norm_only"), ValueError, "selects none"),
    (lambda m: keras_tram.SAM(m, perturb=lambda v: False), ValueError, "selects none"),
    (lambda m: keras_tram.SAM(m, perturb=lambda v: "yes"), TypeError, "`perturb`"),
    (lambda m: keras_tram.SAM(m, perturb=["no/such/kernel"]), ValueError, "`perturb`"),
    (lambda m: keras_tram.SAM(m, perturb=[1.0]), TypeError, "`perturb`"),
    (lambda m: keras_tram.TRPO(m, perturb="no_bias_norm"), ValueError, "`perturb`"),
    (lambda m: keras_tram.GSAM(m, alpha=-1.0), ValueError, "`alpha`"),
    (lambda m: keras_tram.GSAM(m, alpha=True), TypeError, "`alpha`"),
]


def math_nan():
    return float("nan")


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_arguments_name_the_argument(index):
    make, error, text = BAD[index]
    model, _ = make_mlp()
    with pytest.raises(error, match=text.replace("`", "`")):
        make(model)


def test_a_selection_from_another_model_is_an_error():
    model, _ = make_mlp()
    other, _ = make_mlp()
    other_variable = keras.Variable(np.zeros(3), name="kernel")
    with pytest.raises(ValueError, match="`perturb`"):
        keras_tram.SAM(model, perturb=[other_variable])
    del other
