"""Scheduled radii against NumPy closed forms, their configs and `.keras`
files, ρ = 0 against plain `fit`, and their arguments."""

import json

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram.pieces import schedule

import reference
from support import assert_weights
from support import BATCH
from support import batches
from support import counted
from support import cross_entropy
from support import epoch_means
from support import EXECUTION_MODES
from support import fit_in_batches
from support import LEARNING_RATE
from support import make_data
from support import make_mlp
from support import STEPS


def _decay():
    return keras.optimizers.schedules.PolynomialDecay(0.4, decay_steps=6, end_learning_rate=0.1)


@pytest.mark.parametrize("method", ["sam", "asam"])
@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_scheduled_rho_matches_closed_form(method, mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrap = {"sam": keras_tram.SAM, "asam": lambda m, rho: keras_tram.ASAM(m, rho=rho, eta=0.1)}
    history = fit_in_batches(wrap[method](model, rho=_decay()), x, y, mode=mode)
    rhos = [reference.polynomial_decay(0.4, 6, 0.1, t) for t in range(8)]
    epsilon = {
        "sam": lambda t, g, w: reference.sam_epsilon(g, w, rhos[t]),
        "asam": lambda t, g, w: reference.asam_epsilon(g, w, rhos[t], 0.1),
    }[method]
    expected, _ = reference.train_sgd(initial, batches(x, y), counted(epsilon), LEARNING_RATE)
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], epoch_means(rhos), rtol=1e-5)


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_rho_following_the_learning_rate_matches_closed_form(mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    rho = schedule.FollowLearningRate(rho_max=0.5, rho_min=0.1)  # lr_max: the lr at update 0
    lr = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=8)
    history = fit_in_batches(keras_tram.SAM(model, rho=rho), x, y, keras.optimizers.SGD(lr), mode=mode)
    rates = [reference.cosine_decay(LEARNING_RATE, 8, t) for t in range(8)]
    rhos = [reference.follow_learning_rate(0.5, 0.1, r, LEARNING_RATE) for r in rates]
    assert rhos[0] == pytest.approx(0.5) and rhos[-1] < 0.12
    expected, _ = reference.train_sgd(
        initial, batches(x, y), counted(lambda t, g, w: reference.sam_epsilon(g, w, rhos[t])),
        rates,
    )
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], epoch_means(rhos), rtol=1e-5)


def test_rho_follows_a_given_lr_range_and_a_loss_scaled_optimizer():
    """Explicit `lr_max`/`lr_min` (a warmup schedule's peak), through a
    `LossScaleOptimizer`, whose learning rate is its inner optimizer's."""
    model, initial = make_mlp()
    x, y, _ = make_data()
    rho = schedule.FollowLearningRate(rho_max=0.3, rho_min=0.05, lr_max=0.4, lr_min=0.1)
    lr = keras.optimizers.schedules.PolynomialDecay(0.4, decay_steps=8, end_learning_rate=0.1)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(lr), initial_scale=64.0)
    history = fit_in_batches(keras_tram.SAM(model, rho=rho), x, y, optimizer)
    rates = [reference.polynomial_decay(0.4, 8, 0.1, t) for t in range(8)]
    rhos = [reference.follow_learning_rate(0.3, 0.05, r, 0.4, 0.1) for r in rates]
    expected, _ = reference.train_sgd(
        initial, batches(x, y), counted(lambda t, g, w: reference.sam_epsilon(g, w, rhos[t])),
        rates,
    )
    assert_weights(model, expected)
    np.testing.assert_allclose(history["radius"], epoch_means(rhos), rtol=1e-5)


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
    fit_in_batches(wrapped, x, y, epochs=1)
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
    (lambda m: keras_tram.SAM(m, rho=np.array([0.05])), TypeError, "`rho`"),
    (lambda m: keras_tram.SAM(m, rho=np.array(True)), TypeError, "`rho`"),
    (lambda m: keras_tram.SAM(m, rho=np.array(-0.05)), ValueError, "`rho`"),
]


@pytest.mark.parametrize("value", [np.array(0.05), np.float32(0.05), np.array(5e-2, "float64")])
def test_a_numpy_scalar_is_a_number(value):
    """What `train_on_batch` returns for a logged radius (a 0-d array on
    Keras 3.8) is a radius like any number."""
    model, _ = make_mlp()
    wrapped = keras_tram.SAM(model, rho=value)
    assert wrapped.radius.rho == pytest.approx(0.05) and type(wrapped.radius.rho) is float


def math_nan():
    return float("nan")


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_arguments_name_the_argument(index):
    make, error, text = BAD[index]
    model, _ = make_mlp()
    with pytest.raises(error, match=text.replace("`", "`")):
        make(model)
