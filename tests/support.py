"""What the tests share: small models and data, the ways to compile a step,
the method tables, and weight comparisons. (Closed forms: `reference.py`.)"""

import keras
import numpy as np

import keras_tram

BACKEND = keras.backend.backend()


def make_mlp(seed=0, inputs=4, hidden=5, classes=3, l2=0.0, dropout=0.0):
    """The MLP of `reference.py`, with deterministic weights; returns (model, weights)."""
    rng = np.random.default_rng(seed)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    layers = [
        keras.Input((inputs,)),
        keras.layers.Dense(hidden, activation="tanh", kernel_regularizer=regularizer),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=7))
    model = keras.Sequential(layers + [keras.layers.Dense(classes)])
    weights = [
        rng.normal(0, 0.8, (inputs, hidden)),
        rng.normal(0, 0.3, (hidden,)),
        rng.normal(0, 0.8, (hidden, classes)),
        rng.normal(0, 0.3, (classes,)),
    ]
    model.set_weights([w.astype("float32") for w in weights])
    return model, weights


def fresh_compiled(build):
    """`build(model)` of a new MLP with dropout, compiled with Adam, from the
    same seeds every time: the same weights, noise and dropout masks."""
    keras.utils.set_random_seed(0)
    model, _ = make_mlp(dropout=0.2)
    wrapped = build(model)
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy())
    return wrapped


def make_data(n=16, inputs=4, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = rng.integers(0, classes, size=n)
    sample_weight = rng.uniform(0.2, 2.0, size=n).astype("float32")
    return x, y, sample_weight


def cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# Ways to run a compiled step on this backend: (compile kwargs).
if BACKEND == "torch":
    # Keras compiles torch steps only through torch.compile (`jit_compile=True`),
    # which the core does not claim; the default and eager paths are covered.
    EXECUTION_MODES = {"default": {}, "eager": {"run_eagerly": True}}
else:
    EXECUTION_MODES = {
        "graph": {"jit_compile": False},
        "xla": {"jit_compile": True},
        "eager": {"run_eagerly": True},
    }


STEPS = 4


def fit_full_batch(wrapped, x, y, steps=STEPS, learning_rate=1.0, sample_weight=None):
    wrapped.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=cross_entropy())
    return wrapped.fit(
        x, y, sample_weight=sample_weight, batch_size=len(x), epochs=steps,
        shuffle=False, verbose=0,
    ).history


def assert_weights(model, expected, atol=1e-5):
    """The model's weights are `expected`, weight for weight (and as many)."""
    actual = model.get_weights()
    assert len(actual) == len(expected), (len(actual), len(expected))
    for value, want in zip(actual, expected):
        np.testing.assert_allclose(value, want, atol=atol, rtol=1e-5)


ALL_METHODS = {
    "tram_previous_step": lambda m: keras_tram.TRAM(m, variant="previous_step"),
    "tram_pretrained": lambda m: keras_tram.TRAM(m, variant="pretrained", radius_scale=50.0),
    "tram_input_noise": lambda m: keras_tram.TRAM(m, variant="input_noise", noise_stddev=0.2),
    "tram_fisher": lambda m: keras_tram.TRAMFisher(m, noise_stddev=0.2),
    "fsam": lambda m: keras_tram.FSAM(m),
    "trpo": lambda m: keras_tram.TRPO(m, weight=0.5),
    "r3f": lambda m: keras_tram.R3F(m, divergence="symmetric_kl"),
    "mesa": lambda m: keras_tram.MESA(m, decay=0.9, weight=0.5),
    # LookSAM's reuse: batches alternate between full and reuse steps. (With
    # TRAM's default radius here, ‖g_v‖ is about 1e-3 of ‖g‖: float16's
    # rounding, which the reuse scales up to α‖g‖; a larger radius keeps the
    # direction above it, so that mixed precision follows float32.)
    "sam_every_2": lambda m: keras_tram.SAM(m, perturbation_every=2),
    "tram_previous_step_every_2": lambda m: keras_tram.TRAM(
        m, perturbation_every=2, radius_scale=20.0
    ),
}


CONSTRUCTORS = {
    "SAM": lambda model: keras_tram.SAM(model, rho=0.2),
    "ASAM": lambda model: keras_tram.ASAM(model, rho=0.4, eta=0.05),
    "SharpnessAware": lambda model: keras_tram.SharpnessAware(
        model, keras_tram.geometry.Adaptive(0.01), keras_tram.radius.Constant(0.1)
    ),
}


def compiled(wrapped, optimizer=None, **kwargs):
    """`wrapped` compiled with SGD (0.1 unless given), cross-entropy and accuracy."""
    wrapped.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss=cross_entropy(),
        metrics=["accuracy"],
        **kwargs,
    )
    return wrapped


# Fitting in batches of 4, 4 updates an epoch, with SGD at 0.2.
LEARNING_RATE = 0.2
BATCH = 4


def batches(x, y, epochs=2, batch_size=BATCH):
    """The batches `fit_in_batches` sees, as `reference.train_sgd` takes them."""
    return [(x[i:i + batch_size], y[i:i + batch_size], None)
            for _ in range(epochs) for i in range(0, len(x), batch_size)]


def fit_in_batches(wrapped, x, y, optimizer=None, epochs=2, mode="graph"):
    wrapped.compile(
        optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE), loss=cross_entropy(),
        **EXECUTION_MODES.get(mode, {}),
    )
    return wrapped.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0).history


def counted(epsilon_fn):
    """`epsilon_fn(t, grads, weights)` as `train_sgd` calls it, `t` the update."""
    calls = []

    def epsilon(grads, weights):
        calls.append(None)
        return epsilon_fn(len(calls) - 1, grads, weights)

    return epsilon


def epoch_means(values, epochs=2):
    return np.mean(np.reshape(values, (epochs, -1)), axis=1)


