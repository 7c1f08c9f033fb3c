"""Files saved by earlier versions of keras-tram, and how they were made.

Each generation of files lives in `tests/data/<version>/<backend>/`: for every
method, a `.keras` file and a `.weights.h5` file saved after two epochs of a
tiny run, and `<method>.npz`, the state (weights, the wrapper's references and
seeds, the optimizer's variables) that the same run reached after two more
epochs. `tests/integration/test_saved_files.py` loads each file with today's code, trains
the two epochs and compares.

Make a new generation (with the version being released, on each backend):

    KERAS_BACKEND=jax python tests/scripts/saved_files.py tests/data/0.1.0

The states are those of one environment: the dropout masks come from the
backend's random numbers, which differ between releases (0.1.0's own code,
from the same seed, ends up to 0.17 apart on Keras 3.8.0 with JAX 0.4.30 and
on Keras 3.15.1 with JAX 0.10.2), and a `.keras` file written by a Keras
does not load in an older one (3.8 rejects 3.15's `quantization_config`). So a generation may also hold the same
files written, by the same keras-tram version, in another environment, in
`<backend>/<environment()>/` (`keras-3.8.0-jax-0.4.30`: the floor CI checks);
where the running environment has such a folder, its files are the ones
checked. Write one with `--environment`:

    KERAS_BACKEND=jax python tests/scripts/saved_files.py tests/data/0.1.0 --environment
"""

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_tram  # noqa: E402

from support import fresh_compiled  # noqa: E402
from support import make_data  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")

# The constructors of the saved wrappers, by file name. Names are never
# reused for another constructor: a file on disk must keep meaning the same.
METHODS = {
    "sam": lambda m: keras_tram.SAM(m, rho=0.2),
    "asam": lambda m: keras_tram.ASAM(m, rho=0.5, eta=0.01),
    "fsam": lambda m: keras_tram.FSAM(m, rho=0.1, eta=0.5),
    "tram_previous_step": lambda m: keras_tram.TRAM(m, variant="previous_step",
                                                    radius_scale=20.0),
    "tram_pretrained": lambda m: keras_tram.TRAM(m, variant="pretrained", radius_scale=20.0),
    "tram_input_noise": lambda m: keras_tram.TRAM(m, variant="input_noise",
                                                  noise_stddev=0.2),
    "tram_fisher": lambda m: keras_tram.TRAM(m, variant="fisher", noise_stddev=0.2),
    "trpo": lambda m: keras_tram.TRPO(m, weight=0.5),
    "r3f": lambda m: keras_tram.R3F(m, noise_stddev=0.2, divergence="symmetric_kl"),
    "mesa": lambda m: keras_tram.MESA(m, decay=0.9, weight=0.5),
    "asam_trpo_chunks": lambda m: keras_tram.SharpnessAware(
        m, keras_tram.geometry.Adaptive(0.0), keras_tram.radius.Constant(0.3),
        penalty=keras_tram.penalty.Penalty(keras_tram.references.PreviousWeights(), 0.5),
        perturbation_chunks=2,
    ),
}
EPOCHS = 2  # before saving, and again after loading


def fresh(name):
    """The same new, compiled wrapper every time: seeds, weights and dropout."""
    return fresh_compiled(METHODS[name])


def fit(wrapped):
    x, y, _ = make_data()
    return wrapped.fit(x, y, batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0)


def state(wrapped):
    """Everything a step may change: weights, the wrapper's own variables
    (references, flags, seeds) and the optimizer's variables."""
    variables = (wrapped.model.weights + wrapped.non_trainable_variables
                 + wrapped.optimizer.variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def environment():
    """`keras-<version>-<backend>-<version>`: what the saved states depend on."""
    backend = keras.backend.backend()
    library = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[backend]
    return f"keras-{keras.__version__}-{backend}-{__import__(library).__version__}"


def folder(generation, backend=None):
    """The files of `generation` for `backend` (the current one by default):
    those written in the running environment if the generation has them."""
    backend = backend or keras.backend.backend()
    target = os.path.join(generation, backend)
    if backend == keras.backend.backend():
        own = os.path.join(target, environment())
        if os.path.isdir(own):
            return own
    return target


def write(generation, in_environment=False):
    """Saves every method's files into `generation` for the current backend
    (into its folder for the running environment if `in_environment`)."""
    target = folder(generation)
    if in_environment:
        target = os.path.join(generation, keras.backend.backend(), environment())
    os.makedirs(target, exist_ok=True)
    for name in METHODS:
        wrapped = fresh(name)
        fit(wrapped)
        wrapped.save(os.path.join(target, f"{name}.keras"))
        wrapped.save_weights(os.path.join(target, f"{name}.weights.h5"))
        fit(wrapped)
        np.savez(os.path.join(target, f"{name}.npz"), *state(wrapped))
        print(f"wrote {target}/{name}.*")


if __name__ == "__main__":
    write(sys.argv[1], in_environment="--environment" in sys.argv[2:])
