"""The supported Keras range: a Keras below the floor stops `import
keras_tram` with a message naming both versions; a newer Keras that lacks a
private attribute keras-tram reads gives an error naming it, not a wrong step."""

import os
import subprocess
import sys

import keras
import pytest

import keras_tram
from keras_tram._keras import compat
from keras_tram._keras import versions

from support import cross_entropy
from support import make_data
from support import make_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _import_with_keras_version(version):
    """`import keras_tram` in a fresh interpreter where the installed Keras
    reports `version` (nothing installed: the metadata lookup is patched)."""
    program = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        f"m.version = lambda name: {version!r} if name in ('keras', 'keras-nightly') else real(name)\n"
        "import keras_tram\n"
        "print('imported', keras_tram.__version__)\n"
    )
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_a_keras_below_the_floor_stops_the_import_naming_both_versions():
    below = _import_with_keras_version("3.7.0")
    assert below.returncode != 0
    last = below.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: keras-tram needs Keras >= 3.8.0")
    assert "Keras 3.7.0 is installed" in last


@pytest.mark.parametrize("version", ["3.8.0", "3.15.1", "3.99.0", "4.0.0.dev2027"])
def test_the_floor_and_newer_versions_import(version):
    completed = _import_with_keras_version(version)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "imported" in completed.stdout


def test_versions_compare_as_numbers():
    assert versions.parse("3.10.0") > versions.parse("3.9.2") > versions.parse("3.8")
    assert versions.parse("3.8.0rc1") == (3, 8, 0)
    with pytest.raises(ImportError, match=r"Keras >= 3\.8\.0, and Keras 3\.7\.9 is installed"):
        versions.check("3.7.9")
    assert versions.check("3.8.0") is None and versions.check("3.16.0") is None


def test_the_installed_keras_is_in_the_checked_range_or_newer():
    assert versions.parse(keras.__version__) >= versions.parse(versions.OLDEST)
    assert versions.installed() == keras.__version__


def _hiding(real, hidden):
    """`real` as a newer Keras might make it: without its attribute `hidden`
    (a stand-in of the same class name that forwards everything else)."""

    def lookup(self, name):
        if name == hidden:
            raise AttributeError(name)
        return getattr(real, name)

    return type(type(real).__name__, (), {"__getattr__": lookup})()


def _wrapped():
    model, _ = make_mlp(dropout=0.1)
    wrapped = keras_tram.SAM(model)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss=cross_entropy())
    x, y, _ = make_data()
    wrapped.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return wrapped


SHIMS = {
    "_flatten_layers": lambda w, hide: compat.layers_of(hide(w)),
    "_seed_generators": lambda w, hide: compat.seed_generators(
        type("Model", (), {"_flatten_layers": lambda self: [hide(w.model.layers[1])]})()
    ),
    "_initial_seed": lambda w, hide: compat.mark_seeded(hide(compat.seed_generators(w)[0]), 1),
    "_trainable_variables": lambda w, hide: compat.own_variables(hide(w)),
    "_loss_tracker": lambda w, hide: compat.loss_tracker(hide(w)),
    "_losses_override": lambda w, hide: compat.stateless_compute_loss(
        hide(w), [], [], [], [], None, None, None, None
    ),
    "_iterations": lambda w, hide: compat.micro_steps(hide(w.optimizer)),
    "_learning_rate": lambda w, hide: compat.initial_learning_rate(hide(w.optimizer)),
}


@pytest.mark.parametrize("attribute", sorted(SHIMS))
def test_a_private_attribute_that_is_gone_is_named_with_the_keras_version(attribute):
    """Each shim, where a newer Keras no longer has the private attribute it
    reads (simulated by hiding it), raises `KerasChanged` naming the
    attribute, the installed Keras and the checked range, instead of
    training or logging wrongly."""
    wrapped = _wrapped()
    with pytest.raises(compat.KerasChanged, match=f"`[A-Za-z]+\\.{attribute}`") as raised:
        SHIMS[attribute](wrapped, lambda real: _hiding(real, attribute))
    message = str(raised.value)
    assert f"Keras {keras.__version__}" in message
    assert f"checked on Keras {versions.OLDEST} to {versions.NEWEST_CHECKED}" in message


def test_optimizer_counters_read_the_inner_optimizer_of_a_loss_scale_optimizer():
    """Keras 3.8's `LossScaleOptimizer.iterations` is its own counter, which
    stays at 0: the update index is the inner optimizer's on every version."""
    inner = keras.optimizers.SGD(0.1)
    optimizer = keras.optimizers.LossScaleOptimizer(inner)
    assert compat.inner_optimizer(optimizer) is inner
    model, _ = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.SAM(model)
    wrapped.compile(optimizer=optimizer, loss=cross_entropy())
    wrapped.fit(x, y, batch_size=4, epochs=1, verbose=0)
    counted = compat.inner_optimizer(optimizer)
    assert int(keras.ops.convert_to_numpy(counted.iterations)) == 4
    assert int(keras.ops.convert_to_numpy(compat.micro_steps(optimizer))) == 4
