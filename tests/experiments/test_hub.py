"""keras-hub presets through the recipes: every method, padding, token-embedding noise.

Tiny presets are built and saved locally with `keras_tram.tiny` (vocabularies
trained here) and loaded back with `from_preset`, the call a real preset
name goes through. Nothing is downloaded.
"""

import os

import keras
import numpy as np
import pytest

import keras_tram
from keras_tram._step import noise as _noise
from keras_tram.experiments import recipes
from keras_tram.experiments import tiny

TEXTS = [
    "the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
    "all that glitters is not gold", "der schnelle braune fuchs springt",
    "le renard brun rapide saute", "el zorro marrón rápido salta",
    "one two three four five six seven", "uno dos tres cuatro cinco seis",
]
CLASSIFIERS = ("xlm_roberta", "bert", "distil_bert")
VISION = ("resnet", "vit")
KINDS = CLASSIFIERS + ("gpt2",) + VISION
EVERY_METHOD = [m for m in keras_tram.METHODS if m != "tram"] + [
    f"tram-{variant}" for variant in keras_tram.TRAM_VARIANTS
]
NOISE_METHODS = ("tram-input_noise", "r3f")
# Constant learning rate: the first step moves the weights.
TEXT_RECIPE = recipes.CROSS_LINGUAL.replace(
    learning_rate=1e-3, warmup_steps=0, total_steps=100, sequence_length=16, batch_size=4
)
VISION_RECIPE = recipes.CROSS_DATASET_VISION.replace(learning_rate=1e-2, total_steps=100)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    return {
        kind: tiny.build_preset(kind, str(folder / kind), texts=TEXTS * 3, num_classes=3,
                                sequence_length=16)
        for kind in KINDS
    }


def make_task(presets, kind, method, recipe=None, **options):
    if kind == "gpt2":
        return recipes.causal_lm(presets[kind], method, recipe=recipe or TEXT_RECIPE, **options)
    if kind in CLASSIFIERS:
        return recipes.text_classifier(presets[kind], 3, method, recipe=recipe or TEXT_RECIPE,
                                       **options)
    return recipes.image_classifier(presets[kind], 3, method, recipe=recipe or VISION_RECIPE,
                                    **options)


SHORT = ["fox", "the dog", "gold", "one two", "saute", "tres", "nine", "der"]


def raw_batch(kind, size=4, seed=0, short=False):
    """Raw inputs (strings, pairs of strings, or images of another size) and labels.

    `short` texts leave padding in every sequence."""
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % 3
    texts = SHORT if short else TEXTS
    if kind == "gpt2":
        return (texts[:size],)
    if kind in CLASSIFIERS:
        return (texts[:size], (texts * 2)[1:size + 1]), labels
    return rng.uniform(0, 255, (size, 20, 24, 3)).astype("float32"), labels


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


# Every method on one preset of each task family (sentence pairs, causal LM,
# images); a pair of plain and sharpness-aware methods and the two noise
# methods on the other architectures.
TRAINING_CASES = [
    (kind, method) for kind in ("xlm_roberta", "gpt2", "resnet") for method in EVERY_METHOD
] + [
    (kind, method) for kind in ("bert", "distil_bert", "vit")
    for method in ("adam", "sam", "tram-input_noise", "r3f")
]


@pytest.mark.parametrize("kind, method", TRAINING_CASES)
def test_every_method_trains_a_preset(presets, kind, method):
    task = make_task(presets, kind, method, run_eagerly=True)
    model = getattr(task, "model", task)
    before = weights_of(model)
    for _ in range(2):
        logs = task.train_on_batch(*raw_batch(kind), return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    after = weights_of(model)
    assert all(np.isfinite(w).all() for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    if method not in keras_tram.methods.PLAIN:
        assert "grad_norm" in logs and logs["grad_norm"] > 0


@pytest.mark.parametrize("kind", ["xlm_roberta", "gpt2", "vit"])
def test_fit_evaluate_predict_take_raw_inputs(presets, kind):
    """Compiled (graph / XLA / torch default) `fit` with raw inputs and validation data."""
    task = make_task(presets, kind, "tram-input_noise")
    batch = raw_batch(kind, size=8)
    history = task.fit(*batch, batch_size=4, epochs=2, validation_data=batch, verbose=0)
    for name in ("loss", "divergence", "radius", "val_loss"):
        assert len(history.history[name]) == 2 and np.isfinite(history.history[name]).all()
    assert history.history["divergence"][-1] > 0
    evaluation = task.evaluate(*batch, batch_size=4, return_dict=True, verbose=0)
    assert "divergence" not in evaluation and np.isfinite(evaluation["loss"])
    predictions = task.predict(batch[0], batch_size=4, verbose=0)
    expected = (8, 16, task.model.backbone.vocabulary_size) if kind == "gpt2" else (8, 3)
    assert predictions.shape == expected


@pytest.mark.parametrize("method", NOISE_METHODS)
@pytest.mark.parametrize("kind", CLASSIFIERS + ("gpt2",))
def test_noise_goes_on_the_token_embeddings(presets, kind, method):
    task = make_task(presets, kind, method, run_eagerly=True)
    logs = task.train_on_batch(*raw_batch(kind), return_dict=True)
    assert logs["divergence"] > 0
    noise = task.radius.reference if method.startswith("tram") else task.penalty.reference
    assert _noise.find_layer(task.model, noise.noise_layer, False) is task.model.backbone.token_embedding


@pytest.mark.parametrize("kind", CLASSIFIERS + ("gpt2",))
def test_tram_x_descends_on_clean_inputs(presets, kind):
    """TRAM-x's update is the adaptive SAM update with the radius it logged:
    the noise shaped the radius only, not the descent pass. (SGD: Adam's
    sign-like first step would turn round-off in near-zero gradients into
    full steps.)"""
    recipe = TEXT_RECIPE.replace(optimizer="sgd", momentum=0.0, learning_rate=0.5)
    task = make_task(presets, kind, "tram-input_noise", recipe=recipe, run_eagerly=True)
    same = make_task(presets, kind, "sgd")
    same.set_weights(task.model.get_weights())  # the new head is initialised at random
    radius = task.train_on_batch(*raw_batch(kind), return_dict=True)["radius"]
    assert radius > 0
    replay = keras_tram.SharpnessAware(
        same, keras_tram.geometry.Adaptive(0.0), keras_tram.radius.Constant(radius)
    )
    replay.compile(optimizer=recipe.make_optimizer("tram"), loss=same.loss,
                   run_eagerly=True)
    replay.train_on_batch(*raw_batch(kind))
    for a, b in zip(weights_of(task.model), weights_of(same)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", CLASSIFIERS + ("gpt2",))
def test_r3f_loss_is_the_clean_loss(presets, kind):
    task = make_task(presets, kind, "r3f", run_eagerly=True)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
        task.model.preprocess_samples(*raw_batch(kind))
    )
    clean = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, task.model(x), sample_weight=sample_weight
    )
    logs = task.train_on_batch(*raw_batch(kind), return_dict=True)
    np.testing.assert_allclose(logs["loss"], keras.ops.convert_to_numpy(clean), rtol=1e-5)
    assert logs["penalty"] > 0


def garbage_in_padding(x, vocabulary_size, seed=0):
    """`x` with random token ids wherever the padding mask is off."""
    x = {k: np.array(v) for k, v in x.items()}
    padded = ~x["padding_mask"].astype(bool)
    rng = np.random.default_rng(seed)
    x["token_ids"] = np.where(
        padded, rng.integers(4, vocabulary_size, x["token_ids"].shape), x["token_ids"]
    ).astype(x["token_ids"].dtype)
    return x, padded


@pytest.mark.parametrize("kind", CLASSIFIERS + ("gpt2",))
def test_divergence_ignores_padding(presets, kind):
    """TRAM-θ_0's `d` on the second step is the same whatever sits in the padding."""
    tasks = [make_task(presets, kind, "tram-pretrained", run_eagerly=True) for _ in range(3)]
    for task in tasks[1:]:
        task.model.set_weights(tasks[0].model.get_weights())
    first = raw_batch(kind, seed=1)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
        tasks[0].model.preprocess_samples(*raw_batch(kind, short=True))
    )
    x = {k: np.array(v) for k, v in x.items()}
    noisy, padded = garbage_in_padding(x, tasks[0].model.backbone.vocabulary_size)
    assert padded.any() and (~padded).any()
    # The third run counts the padded positions (a classifier's attention
    # sees them; a language model's `d` weighs them): `d` must then differ,
    # or the comparison below could not fail.
    if kind == "gpt2":
        shown = (noisy, y, np.ones_like(sample_weight))
    else:
        shown = ({**noisy, "padding_mask": np.ones_like(noisy["padding_mask"])}, y, None)
    divergences = []
    for task, batch in zip(tasks, ((x, y, sample_weight), (noisy, y, sample_weight), shown)):
        task.train_on_batch(*first)
        task.model.preprocessor = None  # the batch below is preprocessed already
        logs = task.train_on_batch(*batch, return_dict=True)
        divergences.append(logs["divergence"])
    clean, garbage, seen = divergences
    assert clean > 0
    # Masked positions drop out exactly; seen ones move the tiny random
    # models' `d` by 1e-5 (relative) and more.
    np.testing.assert_allclose(garbage, clean, rtol=1e-7)
    assert abs(seen - clean) > 1e-6 * clean, divergences


def test_keras_saving_round_trip(presets, tmp_path):
    task = make_task(presets, "bert", "tram-input_noise")
    task.fit(*raw_batch("bert", size=8), batch_size=4, verbose=0)
    path = str(tmp_path / "tram.keras")
    task.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_tram.TRAM) and loaded.variant == "input_noise"
    x = raw_batch("bert")[0]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), task.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- LoRA

def _reference_copies(task):
    """The trust-region reference's copies of the weights, if it keeps any."""
    for piece in (getattr(task, "radius", None), getattr(task, "penalty", None)):
        copies = getattr(getattr(piece, "reference", None), "copies", None)
        if copies is not None:
            return copies
    return None


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("method", EVERY_METHOD)
def test_every_method_trains_lora_adapters(presets, kind, method):
    """`lora_rank=2`: only the adapters (and the head) train, and a reference
    copy holds exactly those weights."""
    task = make_task(presets, kind, method, run_eagerly=True, lora_rank=2)
    model = getattr(task, "model", task)
    trainable = model.trainable_variables
    lora = [v for v in trainable if "lora" in v.name]
    assert lora and len(lora) < len(trainable) < len(model.weights) / 2
    before = [np.array(v) for v in trainable]
    frozen = [np.array(v) for v in model.non_trainable_weights]
    for _ in range(3):
        logs = task.train_on_batch(*raw_batch(kind), return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    moved = [not np.array_equal(a, np.array(v)) for a, v in zip(before, trainable)]
    assert all(m for m, v in zip(moved, trainable) if "lora_b" in v.name), method
    assert all(np.array_equal(a, np.array(v)) for a, v in zip(frozen, model.non_trainable_weights))
    copies = _reference_copies(task)
    if copies is not None:
        assert [tuple(c.shape) for c in copies] == [tuple(v.shape) for v in trainable]


def test_lora_rank_must_be_a_positive_integer(presets):
    with pytest.raises(TypeError, match="`lora_rank`"):
        make_task(presets, "bert", "sam", lora_rank=1.5)


# ------------------------------------------------------------------ recipes


@pytest.mark.parametrize("decay", ["polynomial", "cosine", "constant"])
def test_warmup_decay_matches_its_closed_form(decay):
    peak, total, warmup = 2e-5, 50, 10
    schedule = recipes.WarmupDecay(peak, total, warmup, decay=decay)
    steps = np.arange(0, total + 5)
    progress = np.clip((steps - warmup) / (total - warmup), 0, 1)
    after = {"polynomial": peak * (1 - progress),
             "cosine": peak * 0.5 * (1 + np.cos(np.pi * progress)),
             "constant": peak + 0 * progress}[decay]
    expected = np.where(steps < warmup, peak * steps / warmup, after)
    got = [float(schedule(int(s))) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
    clone = recipes.WarmupDecay.from_config(schedule.get_config())
    assert float(clone(17)) == float(schedule(17))


def test_paper_recipes():
    assert recipes.CROSS_LINGUAL.learning_rate == 2e-5
    assert (recipes.CROSS_LINGUAL.warmup_steps, recipes.CROSS_LINGUAL.total_steps) == (
        10_000, 50_000)
    assert recipes.CROSS_LINGUAL.batch_size == 32
    assert recipes.LANGUAGE_MODELLING.batch_size == 16
    assert recipes.LANGUAGE_MODELLING.sequence_length == 1024
    adam = recipes.CROSS_LINGUAL.make_optimizer("tram")
    assert isinstance(adam, keras.optimizers.Adam)
    assert (adam.beta_1, adam.beta_2) == (0.9, 0.99)
    sgd = recipes.CROSS_DATASET_VISION.make_optimizer("tram-input_noise")
    assert isinstance(sgd, keras.optimizers.SGD)
    assert isinstance(recipes.CROSS_LINGUAL.make_optimizer("sgd"), keras.optimizers.SGD)
    assert isinstance(recipes.CROSS_DATASET_VISION.make_optimizer("adam"), keras.optimizers.Adam)


@pytest.mark.parametrize("change, name", [
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"schedule": "step"}, "schedule"),
    ({"total_steps": 0}, "total_steps"),
    ({"warmup_steps": 60_000}, "warmup_steps"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"learning_rate": -1.0}, "learning_rate"),
])
def test_recipe_rejects_bad_fields(change, name):
    with pytest.raises(ValueError, match=name):
        recipes.CROSS_LINGUAL.replace(**change)


def test_recipes_reject_bad_arguments(presets):
    with pytest.raises(ValueError, match="method"):
        make_task(presets, "resnet", "lamb")
    with pytest.raises(ValueError, match="variant"):
        make_task(presets, "resnet", "sam", variant="pretrained")
    with pytest.raises(TypeError, match="recipe"):
        recipes.image_classifier(presets["resnet"], 3, "sam", recipe={"learning_rate": 1})
    with pytest.raises(ValueError, match="options"):
        recipes.image_classifier(presets["resnet"], 3, "adam", method_options={"rho": 1})


@pytest.mark.parametrize("method, expected", [
    ("tram", ("tram", "previous_step")),
    ("TRAM-input_noise", ("tram", "input_noise")),
    ("sam", ("sam", None)),
    ("adam", ("adam", None)),
])
def test_parse_method(method, expected):
    assert keras_tram.methods.parse_method(method) == expected


def test_tiny_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        tiny.build_preset("t5", str(tmp_path))
    with pytest.raises(ValueError, match="texts"):
        tiny.build_preset("bert", str(tmp_path))


def test_presets_are_saved_as_keras_hub_presets(presets):
    for kind, folder in presets.items():
        assert {"config.json", "model.weights.h5"} <= set(os.listdir(folder)), kind
