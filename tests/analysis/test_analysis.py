"""ε-sharpness, linear CKA and the analysis callbacks against NumPy closed forms."""

import itertools

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram import analysis

import reference
from support import cross_entropy
from support import EXECUTION_MODES
from support import make_data
from support import make_mlp


def _numpy_cka(a, b):
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


@pytest.mark.parametrize("shape", [(40, 3, 5), (6, 10, 20)])  # feature and example space
def test_linear_cka_matches_closed_form(shape):
    n, p, q = shape
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, p))
    b = a @ rng.normal(size=(p, q)) + rng.normal(size=(n, q))
    assert analysis.linear_cka(a, b) == pytest.approx(_numpy_cka(a, b), rel=1e-5)


def test_linear_cka_is_one_for_identical_inputs_and_invariant():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 6))
    b = rng.normal(size=(30, 4)) + a[:, :4]
    orthogonal, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert analysis.linear_cka(a, a) == pytest.approx(1.0, abs=1e-6)
    base = analysis.linear_cka(a, b)
    assert analysis.linear_cka(a @ orthogonal, b) == pytest.approx(base, rel=1e-5)
    assert analysis.linear_cka(7.5 * a, b) == pytest.approx(base, rel=1e-5)
    assert base < 0.99


def _u_statistic_hsic(a, b):
    """HSIC from its definition as a U-statistic over distinct indices."""
    k, l = a @ a.T, b @ b.T
    n = len(a)
    pairs = list(itertools.permutations(range(n), 2))
    triples = list(itertools.permutations(range(n), 3))
    quads = list(itertools.permutations(range(n), 4))
    first = np.mean([k[i, j] * l[i, j] for i, j in pairs])
    second = np.mean([k[i, j] * l[q, r] for i, j, q, r in quads])
    third = np.mean([k[i, j] * l[i, q] for i, j, q in triples])
    return first + second - 2 * third


def test_minibatch_cka_matches_the_u_statistic():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(14, 3))
    b = a[:, :2] * 2.0 + rng.normal(size=(14, 2))
    cka = analysis.MinibatchCKA()
    sums = np.zeros(3)
    for rows in (slice(0, 7), slice(7, 14)):
        cka.update(a[rows], b[rows])
        sums += [_u_statistic_hsic(a[rows], b[rows]), _u_statistic_hsic(a[rows], a[rows]),
                 _u_statistic_hsic(b[rows], b[rows])]
    assert cka.result() == pytest.approx(sums[0] / np.sqrt(sums[1] * sums[2]), rel=1e-9)
    with pytest.raises(ValueError, match="at least 4"):
        cka.update(a[:3], b[:3])


def _quadratic_model(weights):
    """`L(w) = mean_i (x_i · w)²` on the identity rows: `mean_i w_i²`."""
    model = keras.Sequential([keras.Input((len(weights),)),
                              keras.layers.Dense(1, use_bias=False)])
    model.set_weights([np.asarray(weights, "float32")[:, None]])
    return model, np.eye(len(weights), dtype="float32"), np.zeros((len(weights), 1), "float32")


def test_epsilon_sharpness_of_a_quadratic_matches_closed_form():
    w = np.array([0.5, -1.5, 2.0, -0.25])
    model, x, y = _quadratic_model(w)
    epsilon = 0.01
    # A learning rate large enough for one ascent step to reach the box's corner.
    value = analysis.epsilon_sharpness(
        model, x, y, loss="mse", epsilon=epsilon, steps=2, learning_rate=10.0,
        batch_size=4, accumulation_steps=1,
    )
    corner = w + epsilon * (np.abs(w) + 1) * np.sign(w)
    base, top = np.mean(w**2), np.mean(corner**2)
    assert value == pytest.approx(100 * (top - base) / (1 + base), rel=1e-5)


def test_epsilon_sharpness_of_a_constant_loss_is_zero_and_weights_stay():
    model, _ = make_mlp()
    x, y, _ = make_data()
    before = [w.copy() for w in model.get_weights()]
    constant = lambda y_true, y_pred: 0.0 * keras.ops.mean(y_pred) + 1.0  # noqa: E731
    assert analysis.epsilon_sharpness(model, x, y, loss=constant, learning_rate=1.0) == 0.0
    sharp = analysis.epsilon_sharpness(model, x, y, loss=cross_entropy(), epsilon=1e-2,
                                       learning_rate=1.0, batch_size=8)
    assert sharp > 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_epsilon_sharpness_bad_arguments():
    model, _ = make_mlp()
    x, y, _ = make_data()
    with pytest.raises(ValueError, match="`loss`"):
        analysis.epsilon_sharpness(model, x, y)
    with pytest.raises(ValueError, match="`epsilon`"):
        analysis.epsilon_sharpness(model, x, y, loss="mse", epsilon=-1.0)
    with pytest.raises(ValueError, match="`batch_size`"):
        analysis.epsilon_sharpness(model, x, y, loss="mse", batch_size=0)


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_step_statistics_records_every_step(mode):
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.SAM(model, rho=0.3)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.2), loss=cross_entropy(),
                    **EXECUTION_MODES[mode])
    trace = analysis.StepStatistics()
    wrapped.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[trace])
    batches = [(x[i:i + 4], y[i:i + 4], None) for _ in range(2) for i in range(0, 16, 4)]
    _, grad_norms = reference.train_sgd(
        initial, batches, lambda g, w: reference.sam_epsilon(g, w, 0.3), 0.2
    )
    np.testing.assert_allclose(trace.steps["grad_norm"], grad_norms, rtol=1e-4)
    np.testing.assert_allclose(trace.steps["radius"], [0.3] * 8, rtol=1e-6)
    assert "divergence" not in trace.steps  # SAM has none


def test_step_statistics_marks_skipped_steps():
    model, _ = make_mlp()
    x, y, _ = make_data()
    x[4, 0] = np.nan  # the second batch
    wrapped = keras_tram.TRAM(model)
    wrapped.compile(optimizer="sgd", loss=cross_entropy())
    trace = analysis.StepStatistics()
    wrapped.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[trace])
    radius = trace.steps["radius"]
    assert len(radius) == 4 and np.isnan(radius[1])
    assert np.isfinite(np.delete(radius, 1)).all()


@pytest.mark.parametrize("mode", sorted(EXECUTION_MODES))
def test_sharpness_and_cka_callback(mode):
    model, _ = make_mlp()
    x, y, _ = make_data()
    x_out = x[:, ::-1].copy()
    initial = analysis.representations(model, x)
    wrapped = keras_tram.TRAM(model)
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy(),
                    **EXECUTION_MODES[mode])
    options = dict(epsilon=1e-3, steps=2, learning_rate=1.0, batch_size=8)
    callback = analysis.SharpnessAndCKA({"in": (x, y), "out": (x_out, y)}, every=2, **options)
    history = wrapped.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                          callbacks=[callback])
    assert [r["epoch"] for r in callback.records] == [2, 4]
    last = callback.records[-1]
    # The last measurement is of the final weights: recompute it independently.
    assert last["in_sharpness"] == pytest.approx(
        analysis.epsilon_sharpness(wrapped, x, y, **options), rel=1e-6)
    assert last["in_cka"] == pytest.approx(
        _numpy_cka(analysis.representations(wrapped, x), initial), rel=1e-4)
    assert history.history["out_cka"][-1] == pytest.approx(last["out_cka"])
    assert 0.0 < last["in_cka"] < 1.0


def test_plots_write_images(tmp_path):
    pytest.importorskip("matplotlib")
    analysis.plot_traces({"a": {"radius": [0.1, 0.2], "divergence": [0.0, 0.01]}},
                         tmp_path / "trace.png")
    analysis.plot_accuracy_vs_sharpness({"sam": (0.5, 0.9)}, tmp_path / "scatter.png")
    for name in ("trace.png", "scatter.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_statistics_writes_to_tensorboard(tmp_path):
    tf = pytest.importorskip("tensorflow")
    model, _ = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(model, variant="pretrained")
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    writer = tf.summary.create_file_writer(str(tmp_path))
    trace = analysis.StepStatistics(writer=writer)
    wrapped.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[trace])
    writer.flush()
    written = {}
    for path in tmp_path.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                written.setdefault(value.tag, []).append((event.step, number))
    for name in ("radius", "divergence", "grad_norm"):
        steps, values = zip(*sorted(written[name]))
        assert steps == (0, 1, 2, 3)
        np.testing.assert_allclose(values, trace.steps[name], rtol=1e-6)
