"""Zero-shot cross-lingual transfer: fine-tune on one language, evaluate on many.

The shape of the paper's XNLI table: a multilingual encoder (XLM-R) is
fine-tuned on labelled text in English only, then its accuracy is reported
per language and averaged over the languages it never saw labels in.

    # a real preset, on your machine (downloads the weights once)
    KERAS_BACKEND=jax python examples/cross_lingual.py \\
        --preset xlm_roberta_base_multi --method tram --variant input_noise --data xnli/
    # offline, in under two minutes on a CPU: a tiny XLM-R pre-trained here
    KERAS_BACKEND=jax python examples/cross_lingual.py --tiny

Data: `--data DIR` holds `train.jsonl` (the training language) and one
`<language>.jsonl` per evaluation language, each line
`{"premise": ..., "hypothesis": ..., "label": ...}` (sentence pairs, XNLI /
PAWS-X style) or `{"text": ..., "label": ...}`; `.csv` files with those
columns work too. Without `--data`, the task is built offline from CLDR's
human-translated names (babel): is a name a territory, a language, a
currency or a script? The same held-out names are asked in every language.

`--tiny` fine-tunes as the paper does, from a pre-trained network: a tiny
XLM-RoBERTa encoder pre-trained here as a masked language model on the
training names of every language, unlabelled (built once, cached), then
fine-tuned on the English labels only. `--tiny --preset bert` (or
`distil_bert`) builds a randomly initialised tiny preset of that kind instead.
"""

import csv
import json
import os
import time

import numpy as np
from _common import cache_folder
from _common import check_method
from _common import evaluate_domains
from _common import parser
from _common import recipe_for
from _common import report
from _common import tiny_folder

from keras_tram.experiments import datasets
from keras_tram.experiments import pretraining
from keras_tram.experiments import recipes
from keras_tram.experiments import tiny

XNLI_LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh",
                  "hi", "sw", "ur")
TINY_LANGUAGES = ("en", "de", "fr", "es", "ru", "zh")


def read_examples(path):
    """`(texts, labels)` from a JSONL or CSV file; texts are `(premises,
    hypotheses)` for sentence pairs."""
    with open(path, encoding="utf-8") as file:
        if path.endswith(".csv"):
            rows = list(csv.DictReader(file))
        else:
            rows = [json.loads(line) for line in file if line.strip()]
    labels = np.array([int(row["label"]) for row in rows], "int32")
    if rows and "premise" in rows[0]:
        return ([row["premise"] for row in rows], [row["hypothesis"] for row in rows]), labels
    return [row["text"] for row in rows], labels


def load_data(arguments, languages):
    """`(train, evaluation, unlabelled)`: the labelled training examples,
    `{language: (x, y)}` to evaluate, and the unlabelled texts of every
    language a tiny encoder is pre-trained on."""
    if arguments.data:
        train = read_examples(_find(arguments.data, "train"))
        evaluation = {
            language: read_examples(_find(arguments.data, language))
            for language in languages
            if _find(arguments.data, language, required=False)
        }
        unlabelled = [t for x, _ in evaluation.values() for t in _texts(x)] + _texts(train[0])
        return train, evaluation, unlabelled
    task = datasets.cldr_classification(languages, seed=arguments.seed)
    return task[arguments.train_language]["train"], {
        language: splits["test"] for language, splits in task.items()
    }, [name for splits in task.values() for name in splits["train"][0]]


# The tiny encoder: pre-trained as a masked LM on short names.
TINY_ENCODER = pretraining.TINY.replace(vocabulary_size=1000, sequence_length=16, epochs=4,
                                        learning_rate=3e-3)


def _texts(x):
    return [t for part in x for t in part] if isinstance(x, tuple) else list(x)


def _find(folder, name, required=True):
    for extension in (".jsonl", ".csv"):
        path = os.path.join(folder, name + extension)
        if os.path.exists(path):
            return path
    if required:
        raise SystemExit(f"error: no {name}.jsonl or {name}.csv in {folder}")
    return None


def main(argv=None):
    started = time.time()
    arguments = parser(__doc__.splitlines()[0], "xlm_roberta_base_multi")
    arguments.add_argument("--data", default=None, help="folder of JSONL/CSV pair files")
    arguments.add_argument("--train-language", default="en")
    arguments.add_argument("--languages", default=None,
                           help="comma-separated evaluation languages "
                                "(default: XNLI's 15; with --tiny: 6)")
    arguments.add_argument("--sequence-length", type=int, default=None)
    arguments = arguments.parse_args(argv)
    check_method(arguments)
    tiny_run = arguments.tiny
    languages = tuple(arguments.languages.split(",")) if arguments.languages else (
        TINY_LANGUAGES if tiny_run else XNLI_LANGUAGES)
    if arguments.train_language not in languages:
        languages = (arguments.train_language,) + languages
    epochs = arguments.epochs or (8 if tiny_run else 2)
    (train_x, train_y), evaluation, unlabelled = load_data(arguments, languages)
    num_classes = int(max(train_y.max(), *(y.max() for _, y in evaluation.values()))) + 1

    preset = arguments.preset
    if tiny_run:
        kind = preset if preset in tiny.TEXT_KINDS else "xlm_roberta"
        if kind == "xlm_roberta":
            preset = pretraining.masked_lm_preset(unlabelled, cache_folder(arguments),
                                                  TINY_ENCODER, num_classes)
            arguments.preset = "tiny xlm_roberta, pre-trained as a masked LM"
        else:
            texts = [t for x, _ in evaluation.values() for t in _texts(x)] + _texts(train_x)
            preset = tiny.build_preset(kind, tiny_folder(kind), texts=texts,
                                       num_classes=num_classes, sequence_length=16,
                                       vocabulary_size=1000, seed=arguments.seed)
            arguments.preset = f"tiny {kind} (random weights)"
    batch_size = arguments.batch_size or (32 if tiny_run else recipes.CROSS_LINGUAL.batch_size)
    steps = epochs * -(-len(train_y) // batch_size)
    recipe = recipe_for(recipes.CROSS_LINGUAL, arguments, steps, warmup_fraction=0.2)
    if tiny_run:
        recipe = recipe.replace(learning_rate=arguments.learning_rate or 3e-3)
    if arguments.sequence_length:
        recipe = recipe.replace(sequence_length=arguments.sequence_length)
    classifier = recipes.text_classifier(preset, num_classes, arguments.method,
                                         arguments.variant, recipe=recipe)
    classifier.fit(train_x, train_y, batch_size=batch_size, epochs=epochs,
                   verbose=2 if tiny_run else "auto")
    accuracy = evaluate_domains(classifier, evaluation, batch_size, "accuracy")
    others = [a for language, a in accuracy.items() if language != arguments.train_language]
    summary = {"avg (others)": float(np.mean(others))} if others else {}
    return report("cross_lingual", arguments, "accuracy", accuracy, summary, started)


if __name__ == "__main__":
    main()
