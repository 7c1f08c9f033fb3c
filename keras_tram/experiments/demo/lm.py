"""`keras-tram demo --task lm`: the paper's out-of-domain language modelling in
miniature, offline, on a CPU.

Protocol (the shape of the paper's Table 4, M2D2 with GPT-2):
1. Pre-train a small GPT-2 (keras-hub's `GPT2CausalLM`, about 1M weights, a
   byte-pair vocabulary trained here) as a causal language model on 95% of
   gensim's English Wikipedia excerpt; once, cached per backend
   (`keras_tram.pretraining`), rebuilt if missing or corrupt.
2. Fine-tune it on news (90% of the Lee corpus) with the paper's language
   modelling recipe scaled to the run: Adam β = (0.9, 0.99), a linear
   warm-up over the first fifth of the steps then a linear (polynomial) decay
   to 0. Every method gets the same blocks of text, steps, optimizer,
   learning rate and seeds; only the method changes.
3. Report perplexity in domain (the held-out tenth of the news) and out of
   domain: the held-out Wikipedia (what fine-tuning forgets) and Pang & Lee's
   movie reviews (never seen).
"""

import dataclasses
import time

import keras
import numpy as np

from keras_tram import analysis
from keras_tram.experiments import datasets
from keras_tram.experiments import pretraining
from keras_tram.experiments.demo.fitting import STATISTICS
from keras_tram.experiments.demo.fitting import StepTimer
from keras_tram.experiments.demo.fitting import wrapped
from keras_tram.experiments.recipes import WarmupDecay

DOMAINS = ("news (in domain)", "Wikipedia (held out)", "movie reviews")


@dataclasses.dataclass(frozen=True)
class Scale:
    """The size of a run: the network, its pre-training and the fine-tuning."""

    network: pretraining.PretrainingConfig
    wikipedia_documents: int  # documents of the excerpt used (None: all)
    steps: int
    batch_size: int
    learning_rate: float
    warmup_fraction: float = 0.2  # the paper's 10k of 50k steps
    evaluation_blocks: int = 256  # per domain


SCALES = {
    # About 1M weights, pre-trained on ~0.9M tokens.
    "full": Scale(pretraining.SMALL.replace(epochs=2), None, steps=150, batch_size=16,
                  learning_rate=1e-3),
    # `--quick`: the same network, fewer fine-tuning steps.
    "quick": Scale(pretraining.SMALL.replace(epochs=2), None, steps=100, batch_size=16,
                   learning_rate=1e-3),
    # The end-to-end check of tests: seconds, and numbers that mean nothing.
    "tiny": Scale(pretraining.TINY.replace(epochs=1), 400, steps=12, batch_size=8,
                  learning_rate=3e-3, evaluation_blocks=16),
}


def _split(documents, held_out, seed=0):
    order = np.random.default_rng(seed).permutation(len(documents))
    cut = int(round(len(documents) * (1 - held_out)))
    return [documents[i] for i in order[:cut]], [documents[i] for i in order[cut:]]


class LanguageModelling:
    """The language-modelling task for `keras_tram.experiments.demo.runner.run`."""

    name = "lm"
    metric = "perplexity"
    higher_is_better = False
    domains = DOMAINS

    def __init__(self, scale="full"):
        self.scale = SCALES[scale]
        self.protocol = {
            "scale": scale,
            "pretrain": {"domain": "English Wikipedia excerpt (gensim), 95% of documents",
                         **dataclasses.asdict(self.scale.network)},
            "fine_tune": {"domain": "news (Lee corpus), 90% of documents",
                          "optimizer": "adam", "beta_1": 0.9, "beta_2": 0.99,
                          "schedule": "linear warm-up, then linear decay to 0",
                          **{k: v for k, v in dataclasses.asdict(self.scale).items()
                             if k != "network"}},
        }

    def prepare(self, cache, log=print):
        import keras_hub

        wikipedia = datasets.text_domain("wikipedia")[:self.scale.wikipedia_documents]
        wikipedia, held_out = _split(wikipedia, 0.05)
        news, news_held_out = _split(datasets.text_domain("news"), 0.1)
        folder = pretraining.causal_lm_preset(wikipedia, cache, self.scale.network, log)
        task = keras_hub.models.CausalLM.from_preset(folder)
        tokenizer = task.preprocessor.tokenizer
        self.backbone_config = task.backbone.get_config()
        self.backbone_class = type(task.backbone)
        self.task_class = type(task)
        self.weights = task.backbone.get_weights()
        length = self.scale.network.sequence_length

        def blocks(documents):
            return pretraining.token_blocks(tokenizer(list(documents)), length,
                                            tokenizer.end_token_id)

        self.train = blocks(news)
        evaluation = {DOMAINS[0]: news_held_out, DOMAINS[1]: held_out,
                      DOMAINS[2]: datasets.text_domain("reviews")}
        self.evaluation = {d: blocks(docs)[:self.scale.evaluation_blocks]
                           for d, docs in evaluation.items()}
        self.protocol["fine_tune"]["blocks"] = len(self.train)
        self.protocol["evaluation_tokens"] = {d: int(b[:, 1:].size)
                                              for d, b in self.evaluation.items()}
        self.protocol["parameters"] = int(sum(np.size(w) for w in self.weights))
        self.before = self._perplexities(self._network())
        log(f"pre-trained network: {self.protocol['parameters']:,} weights; perplexity "
            + ", ".join(f"{d} {p:.1f}" for d, p in self.before.items()))

    def pretrained_scores(self):
        return dict(self.before)

    def _network(self):
        backbone = self.backbone_class.from_config(self.backbone_config)
        backbone.set_weights(self.weights)
        return self.task_class(backbone, preprocessor=None)

    def _perplexities(self, network):
        results = {}
        for domain, blocks in self.evaluation.items():
            x, y = pretraining.lm_inputs(blocks)
            logits = np.asarray(network.predict(x, batch_size=64, verbose=0), "float64")
            shifted = logits - logits.max(axis=-1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            nll = -np.take_along_axis(log_p, y[..., None], axis=-1).mean()
            results[domain] = float(np.exp(nll))
        return results

    def fine_tune(self, method, options, seed):
        """Fine-tunes the pre-trained network on news with `method`:
        perplexity on each domain and the step statistics."""
        keras.utils.set_random_seed(seed)
        scale = self.scale
        network = self._network()
        trainer = wrapped(network, method, options)
        schedule = WarmupDecay(scale.learning_rate, total_steps=scale.steps,
                               warmup_steps=int(scale.warmup_fraction * scale.steps))
        trainer.compile(
            optimizer=keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.99),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[],
        )
        # The same `steps` batches for every method: shuffled blocks, epoch
        # after epoch, in the seed's order.
        rng = np.random.default_rng(seed)
        rows = scale.steps * scale.batch_size
        order = np.concatenate([rng.permutation(len(self.train))
                                for _ in range(-(-rows // len(self.train)))])[:rows]
        x, y = pretraining.lm_inputs(self.train[order])
        trace = analysis.StepStatistics(names=STATISTICS)
        timer = StepTimer()
        began = time.time()
        history = trainer.fit(x, y, batch_size=scale.batch_size, epochs=1, shuffle=False,
                              verbose=0, callbacks=[trace, timer])
        trained = time.time() - began
        return {
            "scores": self._perplexities(network),
            "per_epoch": {name: [float(v) for v in values]
                          for name, values in history.history.items() if name in STATISTICS},
            "per_step": trace.steps, "train_seconds": round(trained, 2),
            "step_seconds": timer.seconds_per_step(),
        }
