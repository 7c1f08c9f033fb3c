"""Tiny keras-hub presets, built and saved locally, for tests and `--tiny` runs.

Each builder makes a two-layer, hidden-32 version of a keras-hub architecture
with its tokenizer (a vocabulary trained here on the given texts) or image
converter, and saves it with `save_to_preset`. The result loads through the
same `from_preset` call as a real preset such as `xlm_roberta_base_multi`:

    >>> import tempfile
    >>> from keras_tram import tiny
    >>> folder = tiny.build_preset("resnet", tempfile.mkdtemp(), num_classes=3)
    >>> import keras_hub
    >>> keras_hub.models.ImageClassifier.from_preset(folder, num_classes=5).num_classes
    5

Weights are randomly initialised (seeded): these presets stand in for real
ones in code paths, not in accuracy. Text presets need TensorFlow (keras-hub's
tokenizers run on `tensorflow_text`) whatever the Keras backend.
"""

import collections
import heapq
import os
import re

import keras

KINDS = ("xlm_roberta", "bert", "distil_bert", "gpt2", "resnet", "vit")
TEXT_KINDS = ("xlm_roberta", "bert", "distil_bert", "gpt2")

_HIDDEN = 32
_TRANSFORMER = dict(num_layers=2, num_heads=2, hidden_dim=_HIDDEN, intermediate_dim=64)


def build_preset(kind, directory, texts=None, num_classes=2, vocabulary_size=300,
                 sequence_length=32, image_size=32, seed=0):
    """Builds a tiny preset of `kind` and saves it to `directory`.

    Args:
        kind: one of `KINDS`: `"xlm_roberta"`, `"bert"`, `"distil_bert"`
            (text classifiers), `"gpt2"` (a causal LM), `"resnet"`, `"vit"`
            (image classifiers).
        directory: where to save the preset; created if missing.
        texts: for text kinds, the strings the vocabulary is trained on.
        num_classes: the classifier head's classes (the preset's default;
            recipes may ask for another number).
        vocabulary_size: the largest vocabulary to train (text kinds).
        sequence_length: the preprocessor's sequence length (text kinds).
        image_size: the side of the square images the converter resizes to.
        seed: seeds the weight initialisation.

    Returns:
        `directory`, ready for `from_preset`.
    """
    import keras_hub

    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.")
    if kind in TEXT_KINDS and not texts:
        raise ValueError(f"`texts` (a list of strings) is needed to build a {kind!r} vocabulary.")
    os.makedirs(directory, exist_ok=True)
    keras.utils.set_random_seed(seed)
    task = _BUILDERS[kind](keras_hub, texts, num_classes, vocabulary_size,
                           sequence_length, image_size)
    task.save_to_preset(directory)
    return directory


def _xlm_roberta(hub, texts, num_classes, vocabulary_size, sequence_length, _):
    proto = _sentence_piece(texts, vocabulary_size)
    tokenizer = hub.models.XLMRobertaTokenizer(proto=proto)
    backbone = hub.models.XLMRobertaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), dropout=0.0,
        max_sequence_length=sequence_length + 2, **_TRANSFORMER,
    )
    preprocessor = hub.models.XLMRobertaTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    return hub.models.XLMRobertaTextClassifier(
        backbone, num_classes, preprocessor=preprocessor, dropout=0.0
    )


def _word_piece_classifier(prefix):
    """A BERT-family text classifier; `prefix` names its keras-hub classes."""

    def build(hub, texts, num_classes, vocabulary_size, sequence_length, _):
        model = lambda suffix: getattr(hub.models, prefix + suffix)  # noqa: E731
        tokenizer = model("Tokenizer")(
            vocabulary=_word_piece(texts, vocabulary_size), lowercase=True
        )
        backbone = model("Backbone")(
            vocabulary_size=tokenizer.vocabulary_size(), dropout=0.0,
            max_sequence_length=sequence_length, **_TRANSFORMER,
        )
        preprocessor = model("TextClassifierPreprocessor")(
            tokenizer, sequence_length=sequence_length
        )
        return model("TextClassifier")(
            backbone, num_classes, preprocessor=preprocessor, dropout=0.0
        )

    return build


def _gpt2(hub, texts, _, vocabulary_size, sequence_length, __):
    vocabulary, merges = _byte_pair(texts, vocabulary_size)
    tokenizer = hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), dropout=0.0,
        max_sequence_length=sequence_length, **_TRANSFORMER,
    )
    preprocessor = hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    return hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)


def _resnet(hub, _, num_classes, __, ___, image_size):
    # keras-hub's ResNet needs 64 filters in the first stack.
    backbone = hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(image_size, image_size, 3),
    )
    converter = hub.layers.ResNetImageConverter(
        image_size=(image_size, image_size), scale=1 / 255.0
    )
    preprocessor = hub.models.ResNetImageClassifierPreprocessor(converter)
    return hub.models.ResNetImageClassifier(backbone, num_classes, preprocessor=preprocessor)


def _vit(hub, _, num_classes, __, ___, image_size):
    backbone = hub.models.ViTBackbone(
        image_shape=(image_size, image_size, 3), patch_size=8, num_layers=2,
        num_heads=2, hidden_dim=_HIDDEN, mlp_dim=64,
    )
    converter = hub.layers.ViTImageConverter(
        image_size=(image_size, image_size), scale=1 / 127.5, offset=-1.0
    )
    preprocessor = hub.models.ViTImageClassifierPreprocessor(converter)
    return hub.models.ViTImageClassifier(backbone, num_classes, preprocessor=preprocessor)


_BUILDERS = {
    "xlm_roberta": _xlm_roberta, "bert": _word_piece_classifier("Bert"),
    "distil_bert": _word_piece_classifier("DistilBert"),
    "gpt2": _gpt2, "resnet": _resnet, "vit": _vit,
}


# ------------------------------------------------------------ vocabularies


def _sentence_piece(texts, vocabulary_size):
    import tensorflow as tf
    from keras_hub.tokenizers import compute_sentence_piece_proto

    # SentencePiece cannot make more pieces than the text has; ask for what it can.
    size = min(vocabulary_size, 8 + len(set(" ".join(texts))) + len(texts) // 2)
    return compute_sentence_piece_proto(
        tf.data.Dataset.from_tensor_slices(list(texts)), vocabulary_size=size,
        model_type="bpe",
    )


def _word_piece(texts, vocabulary_size):
    import tensorflow as tf
    from keras_hub.tokenizers import compute_word_piece_vocabulary

    return compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(list(texts)), vocabulary_size, lowercase=True,
        reserved_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
    )


def _bytes_to_unicode():
    """GPT-2's printable stand-in for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_pair(texts, vocabulary_size):
    """A byte-level BPE vocabulary and merges, learned greedily from `texts`.

    Each merge joins the most frequent adjacent pair (ties: the smallest
    pair) over every word of the texts; pair counts are updated only for the
    words a merge touches, so a 2k vocabulary over ~0.5M words takes seconds.
    """
    to_unicode = _bytes_to_unicode()
    counts = collections.Counter(
        "".join(to_unicode[b] for b in word.encode("utf-8"))
        for text in texts for word in re.findall(r" ?\w+| ?[^\s\w]+|\s+", text)
    )
    words = [list(word) for word in counts]
    frequency = [counts[word] for word in counts]
    pairs, where = collections.Counter(), collections.defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += frequency[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    vocabulary = ["<|endoftext|>", *sorted(set(to_unicode.values()))]
    merges = []
    while len(vocabulary) < vocabulary_size and heap:
        count, best = heapq.heappop(heap)
        if pairs.get(best, 0) != -count:  # a stale entry: requeue its current count
            if pairs.get(best, 0) > 0:
                heapq.heappush(heap, (-pairs[best], best))
            continue
        merges.append(" ".join(best))
        vocabulary.append("".join(best))
        touched = set()
        for i in where.pop(best):
            word = words[i]
            for pair in zip(word, word[1:]):
                pairs[pair] -= frequency[i]
                touched.add(pair)
            words[i] = word = _merge(word, best)
            for pair in zip(word, word[1:]):
                pairs[pair] += frequency[i]
                where[pair].add(i)
                touched.add(pair)
        for pair in touched:
            if pairs[pair] > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
            else:  # no word holds it any more
                del pairs[pair]
    return {token: i for i, token in enumerate(vocabulary)}, merges


def _merge(word, pair):
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged
