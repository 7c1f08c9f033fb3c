"""Small keras-hub networks pre-trained here, once, and cached per backend.

Fine-tuning is what the TRAM paper studies: a network pre-trained on one kind
of data, fine-tuned on another, evaluated on both and on a third. These
functions make such networks locally, with no download, as keras-hub presets
that load through the same `from_preset` call as a real preset:

- `causal_lm_preset(texts, cache, config)`: a GPT-2 (`GPT2CausalLM`) with a
  byte-pair vocabulary trained on `texts`, pre-trained on them as a causal
  language model.
- `masked_lm_preset(texts, cache, config, num_classes)`: an XLM-RoBERTa
  encoder with a SentencePiece vocabulary trained on `texts`, pre-trained on
  them as a masked language model, saved as an `XLMRobertaTextClassifier`
  (a new head on the pre-trained encoder).

A preset is built once per configuration, text, backend and version, in a
folder of `cache` named after all of them, then reused; a folder that does
not load (a crash mid-write, a foreign file) is rebuilt. The text tokenizers
of keras-hub need TensorFlow, whatever the Keras backend.
"""

import dataclasses
import hashlib
import json
import os
import shutil

import keras
import numpy as np

from keras_tram.experiments import tiny


@dataclasses.dataclass(frozen=True)
class PretrainingConfig:
    """A network's size and how long it is pre-trained.

    `epochs` passes over the text's blocks of `sequence_length` tokens, Adam
    with a linear warm-up over `warmup_fraction` of the steps then a linear
    decay to 0.
    """

    vocabulary_size: int = 2048
    num_layers: int = 4
    num_heads: int = 4
    hidden_dim: int = 128
    intermediate_dim: int = 512
    sequence_length: int = 64
    dropout: float = 0.1
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.1
    seed: int = 0

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# About 1M weights: the demo's language model.
SMALL = PretrainingConfig()
# Two layers of width 32: tests and the examples' `--tiny` runs.
TINY = PretrainingConfig(vocabulary_size=512, num_layers=2, num_heads=2, hidden_dim=32,
                         intermediate_dim=64, sequence_length=32, dropout=0.0, epochs=2,
                         learning_rate=5e-3)


def _hub():
    import keras_hub

    return keras_hub


def cache_folder(cache, kind, config, texts, extra=()):
    """The folder of `cache` for a preset of `kind` made from `config` and `texts`."""
    import keras_hub

    digest = hashlib.sha1()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    key = hashlib.sha1(json.dumps(
        [kind, dataclasses.asdict(config), digest.hexdigest(), list(extra),
         keras.__version__, keras_hub.__version__, keras.backend.backend()],
        sort_keys=True,
    ).encode()).hexdigest()[:12]
    return os.path.join(cache, f"{kind}-{keras.backend.backend()}-{key}")


def cached_preset(folder, build, load, log=print):
    """`load(folder)` if the folder loads, else `build(folder)` then `load`.

    `build` writes into a fresh folder beside `folder`, renamed into place
    once complete, so an interrupted build never leaves a preset that loads.
    """
    name = os.path.basename(folder)
    if os.path.exists(folder):
        try:
            loaded = load(folder)
            log(f"pre-trained network: {folder} (cached)")
            return loaded
        except Exception as error:  # a truncated or foreign folder: build anew
            log(f"pre-trained network: {folder} unreadable ({type(error).__name__}); "
                "rebuilding")
            shutil.rmtree(folder, ignore_errors=True)
            if os.path.exists(folder):
                os.remove(folder)
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    log(f"pre-training {name} (once; cached in {os.path.dirname(folder) or '.'})")
    build(partial)
    os.replace(partial, folder)
    return load(folder)


def token_blocks(token_lists, length, separator):
    """Documents' token ids joined with `separator`, cut into `(n, length + 1)`
    int32 blocks: inputs `[:, :-1]`, next-token targets `[:, 1:]`."""
    stream = []
    for tokens in token_lists:
        stream.extend(int(t) for t in tokens)
        stream.append(separator)
    count = (len(stream) - 1) // length
    if count < 1:
        raise ValueError(f"The text makes fewer than {length + 1} tokens; give more text.")
    stream = np.asarray(stream[:count * length + 1], "int32")
    starts = np.arange(count) * length
    return np.stack([stream[s:s + length + 1] for s in starts])


def lm_inputs(blocks):
    """A GPT-2's inputs and targets for `token_blocks`."""
    x = {"token_ids": blocks[:, :-1], "padding_mask": np.ones_like(blocks[:, :-1])}
    return x, blocks[:, 1:]


def _schedule(config, steps):
    from keras_tram.experiments.recipes import WarmupDecay

    return WarmupDecay(config.learning_rate, total_steps=max(steps, 1),
                       warmup_steps=int(config.warmup_fraction * steps))


def _causal_lm_task(config, vocabulary, merges):
    hub = _hub()
    tokenizer = hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=config.num_layers,
        num_heads=config.num_heads, hidden_dim=config.hidden_dim,
        intermediate_dim=config.intermediate_dim, dropout=config.dropout,
        max_sequence_length=config.sequence_length,
    )
    preprocessor = hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=config.sequence_length
    )
    return hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)


def causal_lm_preset(texts, cache, config=SMALL, log=print):
    """The folder of a GPT-2 preset pre-trained on `texts` (built once, cached)."""
    hub = _hub()

    def build(folder):
        keras.utils.set_random_seed(config.seed)
        vocabulary, merges = tiny._byte_pair(texts, config.vocabulary_size)
        task = _causal_lm_task(config, vocabulary, merges)
        tokenizer = task.preprocessor.tokenizer
        blocks = token_blocks(tokenizer(list(texts)), config.sequence_length,
                              tokenizer.end_token_id)
        steps = config.epochs * -(-len(blocks) // config.batch_size)
        task.compile(
            optimizer=keras.optimizers.Adam(_schedule(config, steps), beta_2=0.99),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[], sampler="greedy",
        )
        task.preprocessor = None  # train on the token blocks directly
        rng = np.random.default_rng(config.seed)
        for _ in range(config.epochs):  # the task's `fit` does not shuffle arrays
            x, y = lm_inputs(blocks[rng.permutation(len(blocks))])
            task.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=2, shuffle=False)
        task.preprocessor = hub.models.GPT2CausalLMPreprocessor(
            tokenizer, sequence_length=config.sequence_length
        )
        task.save_to_preset(folder)

    def load(folder):
        hub.models.CausalLM.from_preset(folder)  # raises if the folder is not whole
        return folder

    folder = cache_folder(cache, "gpt2", config, texts)
    return cached_preset(folder, build, load, log)


def masked_lm_preset(texts, cache, config=TINY, num_classes=2, log=print):
    """The folder of an XLM-RoBERTa classifier preset whose encoder was
    pre-trained on `texts` as a masked language model (built once, cached);
    its `num_classes`-way head is new."""
    hub = _hub()

    def build(folder):
        keras.utils.set_random_seed(config.seed)
        proto = tiny._sentence_piece(texts, config.vocabulary_size)
        tokenizer = hub.models.XLMRobertaTokenizer(proto=proto)
        backbone = hub.models.XLMRobertaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=config.num_layers,
            num_heads=config.num_heads, hidden_dim=config.hidden_dim,
            intermediate_dim=config.intermediate_dim, dropout=config.dropout,
            max_sequence_length=config.sequence_length + 2,
        )
        preprocessor = hub.models.XLMRobertaMaskedLMPreprocessor(
            tokenizer, sequence_length=config.sequence_length,
            mask_selection_rate=0.25, mask_selection_length=max(4, config.sequence_length // 4),
        )
        masked = hub.models.XLMRobertaMaskedLM(backbone, preprocessor=preprocessor)
        steps = config.epochs * -(-len(texts) // config.batch_size)
        masked.compile(
            optimizer=keras.optimizers.Adam(_schedule(config, steps), beta_2=0.99),
            weighted_metrics=[],
        )
        masked.fit(list(texts), batch_size=config.batch_size, epochs=config.epochs,
                   verbose=2)
        classifier = hub.models.XLMRobertaTextClassifier(
            backbone, num_classes,
            preprocessor=hub.models.XLMRobertaTextClassifierPreprocessor(
                tokenizer, sequence_length=config.sequence_length
            ),
            dropout=config.dropout,
        )
        classifier.save_to_preset(folder)

    def load(folder):
        hub.models.TextClassifier.from_preset(folder)
        return folder

    folder = cache_folder(cache, "xlm_roberta", config, texts, extra=[num_classes])
    return cached_preset(folder, build, load, log)
