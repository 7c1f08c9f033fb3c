"""The paper's three tasks in one call: a keras-hub preset, a method, its recipe.

Each function loads a preset (a name such as `"xlm_roberta_base_multi"`, or a
local preset folder) through keras-hub's `from_preset`, wraps the task for the
method and compiles it with the paper's optimizer and learning-rate schedule.
What comes back is ready for `fit`, with raw strings or images: the task's
preprocessor runs inside the wrapper's `fit`, `evaluate` and `predict`.

    from keras_tram.experiments import recipes
    classifier = recipes.text_classifier(
        "xlm_roberta_base_multi", num_classes=3, method="tram", variant="input_noise"
    )
    classifier.fit((premises, hypotheses), labels,
                   batch_size=recipes.CROSS_LINGUAL.batch_size)

keras-hub is the successor of KerasNLP and KerasCV; any Keras 3 model works
with the wrappers themselves (`keras_tram.wrap`), these functions add the
presets and the recipes.
"""

import dataclasses
import math

import keras

from keras_tram.methods import parse_method
from keras_tram.methods import PLAIN
from keras_tram.methods import wrap
from keras_tram.pieces._validation import check_choice
from keras_tram.pieces._validation import check_instance
from keras_tram.pieces._validation import check_non_negative
from keras_tram.pieces._validation import check_positive_int

SCHEDULES = ("polynomial", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An optimizer and learning-rate schedule, and the batch size to fit with.

    `optimizer` is used by every sharpness-aware or trust-region method; the
    plain methods `"adam"` and `"sgd"` pick their own optimizer with the
    recipe's other settings. Change a field with `recipe.replace(...)`.
    """

    optimizer: str
    learning_rate: float
    schedule: str
    total_steps: int
    warmup_steps: int = 0
    batch_size: int = 32
    beta_1: float = 0.9
    beta_2: float = 0.99
    momentum: float = 0.9
    sequence_length: int = None

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, PLAIN)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_non_negative("learning_rate", self.learning_rate)
        for name in ("total_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"`warmup_steps` must be an integer in [0, total_steps={self.total_steps}]; "
                f"got {self.warmup_steps!r}."
            )

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def learning_rate_schedule(self):
        if self.schedule == "constant" and not self.warmup_steps:
            return self.learning_rate
        return WarmupDecay(self.learning_rate, self.total_steps, self.warmup_steps,
                           decay=self.schedule)

    def make_optimizer(self, method):
        """The optimizer for `method`: its own for `"adam"`/`"sgd"`, else the recipe's."""
        name, _ = parse_method(method)
        name = name if name in PLAIN else self.optimizer
        rate = self.learning_rate_schedule()
        if name == "adam":
            return keras.optimizers.Adam(rate, beta_1=self.beta_1, beta_2=self.beta_2)
        return keras.optimizers.SGD(rate, momentum=self.momentum)


# XNLI (XLM-R base): Adam (0.9, 0.99), lr 2e-5, polynomial decay after a
# 10k-step warm-up, 50k steps, batch 32.
CROSS_LINGUAL = Recipe("adam", 2e-5, "polynomial", total_steps=50_000,
                       warmup_steps=10_000, batch_size=32)
# M2D2 (GPT-2 base): as above, batch 16 sequences of 1024 tokens.
LANGUAGE_MODELLING = Recipe("adam", 2e-5, "polynomial", total_steps=50_000,
                            warmup_steps=10_000, batch_size=16, sequence_length=1024)
# ViT-B/16 from ImageNet: SGD, lr 5e-4, cosine decay. The paper's summary
# gives neither momentum nor batch size: 0.9 and 64 are this package's choice.
CROSS_DATASET_VISION = Recipe("sgd", 5e-4, "cosine", total_steps=10_000,
                              batch_size=64, momentum=0.9)


@keras.saving.register_keras_serializable(package="keras_tram")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate`, then decay to 0 at `total_steps`.

    `decay` is `"polynomial"` (linear, power 1), `"cosine"` or `"constant"`.

        >>> schedule = WarmupDecay(1.0, total_steps=10, warmup_steps=2)
        >>> [round(float(schedule(step)), 3) for step in (0, 1, 2, 6, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(self, learning_rate, total_steps, warmup_steps=0, decay="polynomial"):
        check_choice("decay", decay, SCHEDULES)
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.decay = decay

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.maximum(float(self.warmup_steps), 1.0)
        rising = self.learning_rate * step / warmup
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = keras.ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "polynomial":
            falling = self.learning_rate * (1.0 - progress)
        elif self.decay == "cosine":
            falling = self.learning_rate * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        else:
            falling = self.learning_rate * keras.ops.ones_like(progress)
        return keras.ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "decay": self.decay}


def _hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "Recipes load keras-hub presets: `pip install keras-tram[hub]`."
        ) from error
    return keras_hub


def _finish(task, method, variant, recipe, method_options, compile_options, lora_rank,
            **compile_arguments):
    check_instance("recipe", recipe, Recipe)
    if lora_rank is not None:
        # Before wrapping: the references copy the weights trainable then.
        task.backbone.enable_lora(check_positive_int("lora_rank", lora_rank))
    wrapped = wrap(task, method, variant, **(method_options or {}))
    wrapped.compile(optimizer=recipe.make_optimizer(method),
                    **{**compile_arguments, **compile_options})
    return wrapped


def text_classifier(preset, num_classes, method="tram", variant=None,
                    recipe=CROSS_LINGUAL, method_options=None, load_weights=True,
                    lora_rank=None, **compile_options):
    """A keras-hub text classifier (XNLI / PAWS-X style), wrapped and compiled.

    Args:
        preset: a keras-hub preset name (`"xlm_roberta_base_multi"`,
            `"bert_base_multi"`, ...) or a local preset folder.
        num_classes: the classes of the new head.
        method: one of `keras_tram.METHODS` (or `"tram-<variant>"`).
        variant: TRAM's variant; default `"previous_step"`.
        recipe: a `Recipe`; `recipe.sequence_length`, when set, is the
            preprocessor's sequence length.
        method_options: the method's own arguments, e.g. `{"rho": 0.1}`.
        load_weights: load the preset's weights (else random ones).
        lora_rank: an integer >= 1 to train LoRA adapters of that rank
            (`backbone.enable_lora`) instead of the whole backbone; the
            trust-region references then copy the trainable (LoRA and head)
            weights only. ASAM and TRAM with `eta=0` do not perturb LoRA's
            zero-initialised matrices (`θ² = 0`) until they move: pass an
            `eta > 0` in `method_options`, or use SAM's `Euclidean` ball.
        **compile_options: passed to `compile`, overriding the defaults
            (`metrics`, `jit_compile`, `steps_per_execution`, ...).

    Returns:
        The wrapped task (the task itself for `"adam"`/`"sgd"`), compiled
        with sparse categorical cross-entropy on logits and accuracy. `fit`
        takes strings, or pairs of string lists for two-segment inputs.
    """
    hub = _hub()
    preprocessor = hub.models.TextClassifierPreprocessor.from_preset(
        preset, **_sequence_length(recipe)
    )
    task = hub.models.TextClassifier.from_preset(
        preset, num_classes=num_classes, preprocessor=preprocessor,
        load_weights=load_weights,
    )
    return _finish(
        task, method, variant, recipe, method_options, compile_options, lora_rank,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )


def image_classifier(preset, num_classes, method="tram", variant=None,
                     recipe=CROSS_DATASET_VISION, method_options=None, load_weights=True,
                     lora_rank=None, **compile_options):
    """A keras-hub image classifier (ResNet, ViT, ...), wrapped and compiled.

    Arguments as `text_classifier`'s, with `CROSS_DATASET_VISION` as the
    recipe. `fit` takes images of any size; the preset's image converter
    resizes and rescales them.
    """
    hub = _hub()
    task = hub.models.ImageClassifier.from_preset(
        preset, num_classes=num_classes, load_weights=load_weights
    )
    return _finish(
        task, method, variant, recipe, method_options, compile_options, lora_rank,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )


def causal_lm(preset, method="tram", variant=None, recipe=LANGUAGE_MODELLING,
              method_options=None, load_weights=True, lora_rank=None, **compile_options):
    """A keras-hub causal language model (GPT-2, ...), wrapped and compiled.

    Arguments as `text_classifier`'s, with `LANGUAGE_MODELLING` as the
    recipe. `fit` and `evaluate` take strings; the loss, the perplexity
    metric and the trust-region divergence count real tokens only (the
    preprocessor's padding mask is the sample weight).
    """
    hub = _hub()
    preprocessor = hub.models.CausalLMPreprocessor.from_preset(
        preset, **_sequence_length(recipe)
    )
    task = hub.models.CausalLM.from_preset(
        preset, preprocessor=preprocessor, load_weights=load_weights
    )
    return _finish(
        task, method, variant, recipe, method_options, compile_options, lora_rank,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[hub.metrics.Perplexity(from_logits=True)],
    )


def _sequence_length(recipe):
    if recipe.sequence_length is None:
        return {}
    return {"sequence_length": recipe.sequence_length}
