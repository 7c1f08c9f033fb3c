"""The wrapper every demo run fine-tunes with, and what it records per step."""

import time

import keras

from keras_tram.methods import PLAIN
from keras_tram.methods import wrap

# The step statistics each run records (where the method logs them).
STATISTICS = ("radius", "divergence", "relative_perturbation")


def wrapped(network, method, options):
    """`network` wrapped for `method` with `options` (the network itself for
    plain training), logging how far each step perturbs the weights."""
    if method in PLAIN:
        return wrap(network, method, **options)
    return wrap(network, method, log_relative_perturbation=True, **options)


class StepTimer(keras.callbacks.Callback):
    """Times a run's steps after its first (which traces and compiles):
    `seconds_per_step()` is the mean over the others."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def seconds_per_step(self):
        if len(self.ends) < 2:
            return None
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)
