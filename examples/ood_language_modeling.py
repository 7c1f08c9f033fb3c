"""Out-of-domain language modelling: fine-tune a causal LM on one domain,
report perplexity on others.

The shape of the paper's M2D2 table: GPT-2 is fine-tuned on one domain's text
and its perplexity is reported in that domain and in domains it never saw.

    # a real preset, on your machine (downloads the weights once)
    KERAS_BACKEND=jax python examples/ood_language_modeling.py \\
        --preset gpt2_base_en --method tram --variant previous_step
    # offline, in under two minutes on a CPU: a tiny GPT-2 pre-trained here
    KERAS_BACKEND=jax python examples/ood_language_modeling.py --tiny

Data: `--data DIR` holds one `<domain>.txt` per domain (one document per
line); `--train-domain` names the one to fine-tune on (default: news).
Without `--data`, the English text that ships with gensim: a Wikipedia
excerpt, news (the Lee corpus) and movie reviews (Pang & Lee).

`--tiny` fine-tunes as the paper does, from a pre-trained network: a tiny
GPT-2 pre-trained here as a causal LM on the first documents of the Wikipedia
excerpt (built once, cached), evaluated on Wikipedia documents it never saw.
"""

import os
import time

import numpy as np
from _common import cache_folder
from _common import check_method
from _common import evaluate_domains
from _common import parser
from _common import recipe_for
from _common import report

from keras_tram.experiments import datasets
from keras_tram.experiments import pretraining
from keras_tram.experiments import recipes

# The tiny GPT-2 of `--tiny`, and the Wikipedia documents it is pre-trained on
# (the others are the Wikipedia domain it is evaluated on).
TINY_NETWORK = pretraining.TINY.replace(vocabulary_size=1000, sequence_length=64)
TINY_PRETRAINING_DOCUMENTS = 1000


def load_data(arguments):
    """`(train, evaluation, pretraining)`: the documents to fine-tune on,
    `{domain: documents}` to evaluate, and (with --tiny, without --data) the
    Wikipedia documents the tiny network is pre-trained on."""
    pretraining_texts = None
    if arguments.data:
        domains = {}
        for name in sorted(os.listdir(arguments.data)):
            if name.endswith(".txt"):
                with open(os.path.join(arguments.data, name), encoding="utf-8") as file:
                    domains[name[:-4]] = [line.strip() for line in file if line.strip()]
    else:
        domains = {name: datasets.text_domain(name) for name in datasets.TEXT_DOMAINS}
        if arguments.tiny:
            wikipedia = domains["wikipedia"]
            pretraining_texts = wikipedia[:TINY_PRETRAINING_DOCUMENTS]
            domains["wikipedia"] = wikipedia[TINY_PRETRAINING_DOCUMENTS:]
    if arguments.train_domain not in domains:
        raise SystemExit(f"error: --train-domain {arguments.train_domain!r} is not one of "
                         f"{sorted(domains)}")
    rng = np.random.default_rng(arguments.seed)
    documents = {name: [docs[i] for i in rng.permutation(len(docs))]
                 for name, docs in domains.items()}
    train_documents = documents[arguments.train_domain]
    cut = int(0.9 * len(train_documents))
    train = train_documents[:cut][:arguments.train_size or None]
    evaluation = {f"{arguments.train_domain} (in domain)": train_documents[cut:]}
    for name, docs in documents.items():
        if name != arguments.train_domain:
            evaluation[name] = docs
    evaluation = {name: docs[:arguments.eval_size] for name, docs in evaluation.items()}
    return train, evaluation, pretraining_texts


def main(argv=None):
    started = time.time()
    arguments = parser(__doc__.splitlines()[0], "gpt2_base_en")
    arguments.add_argument("--data", default=None, help="folder of <domain>.txt files")
    arguments.add_argument("--train-domain", default="news")
    arguments.add_argument("--train-size", type=int, default=None,
                           help="documents to fine-tune on (default: all)")
    arguments.add_argument("--eval-size", type=int, default=None,
                           help="documents per evaluation domain")
    arguments.add_argument("--sequence-length", type=int, default=None)
    arguments = arguments.parse_args(argv)
    check_method(arguments)
    tiny_run = arguments.tiny
    if tiny_run:
        arguments.train_size = arguments.train_size or 1000
        arguments.eval_size = arguments.eval_size or 150
    arguments.eval_size = arguments.eval_size or 1000
    epochs = arguments.epochs or (3 if tiny_run else 1)
    train, evaluation, pretraining_texts = load_data(arguments)

    preset = arguments.preset
    sequence_length = arguments.sequence_length or (64 if tiny_run else None)
    if tiny_run:
        # With --data: pre-trained on the domains it is not fine-tuned on.
        texts = pretraining_texts or [d for name, docs in evaluation.items()
                                      if "(in domain)" not in name for d in docs]
        preset = pretraining.causal_lm_preset(texts, cache_folder(arguments), TINY_NETWORK)
        arguments.preset = "tiny gpt2, pre-trained as a causal LM"
    batch_size = arguments.batch_size or (
        32 if tiny_run else recipes.LANGUAGE_MODELLING.batch_size)
    steps = epochs * -(-len(train) // batch_size)
    recipe = recipe_for(recipes.LANGUAGE_MODELLING, arguments, steps, warmup_fraction=0.2)
    if sequence_length:
        recipe = recipe.replace(sequence_length=sequence_length)
    if tiny_run:
        recipe = recipe.replace(learning_rate=arguments.learning_rate or 3e-3)
    model = recipes.causal_lm(preset, arguments.method, arguments.variant, recipe=recipe)
    model.fit(train, batch_size=batch_size, epochs=epochs, verbose=2 if tiny_run else "auto")
    perplexity = evaluate_domains(model, evaluation, batch_size, "perplexity")
    unseen = [p for name, p in perplexity.items() if "(" not in name]
    summary = {"avg (unseen)": float(np.mean(unseen))} if unseen else {}
    return report("ood_language_modeling", arguments, "perplexity", perplexity, summary,
                  started)


if __name__ == "__main__":
    main()
