"""The wrapper every demo run fine-tunes with, and what it records per step."""

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
