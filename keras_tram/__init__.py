"""keras-tram: sharpness-aware and trust-region-aware fine-tuning for Keras 3.

The names below are resolved on first use (PEP 562), so that `import
keras_tram` and the `keras-tram` command cost nothing until a method is
needed; the classes that `.keras` files name are registered with Keras as
soon as Keras is imported. Where each lives: `docs/development.md`.
"""

import importlib

from keras_tram._keras import versions as _versions

_versions.check()

from keras_tram import _moved  # noqa: E402

__version__ = "0.1.0"

# Public name -> the module that defines it.
_NAMES = {
    "SharpnessAware": "keras_tram.methods.sharpness_aware",
    "Step": "keras_tram._step.view",
    "SAM": "keras_tram.methods.sam",
    "ASAM": "keras_tram.methods.asam",
    "FSAM": "keras_tram.methods.fsam",
    "GSAM": "keras_tram.methods.gsam",
    "TRAM": "keras_tram.methods.tram",
    "TRAM_VARIANTS": "keras_tram.methods.tram",
    "TRAMFisher": "keras_tram.methods.tram_fisher",
    "TRPO": "keras_tram.methods.penalized",
    "R3F": "keras_tram.methods.penalized",
    "MESA": "keras_tram.methods.penalized",
    "METHODS": "keras_tram.methods.registry",
    "wrap": "keras_tram.methods.registry",
}
# Public module name -> where it lives.
_MODULES = {
    **{name: f"keras_tram.pieces.{name}" for name in (
        "descent", "divergences", "geometry", "penalty", "radius", "reduction",
        "references", "reuse", "schedule", "selection",
    )},
    **{name: f"keras_tram.experiments.{name}" for name in ("datasets", "recipes", "tiny")},
    "analysis": "keras_tram.analysis",
    "experiments": "keras_tram.experiments",
    "methods": "keras_tram.methods",
    "pieces": "keras_tram.pieces",
}

__all__ = sorted(_NAMES) + sorted(set(_MODULES) - {"experiments", "methods", "pieces"})


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _moved.ATTRIBUTES:
        return _moved.attribute(name)
    else:
        raise AttributeError(f"module 'keras_tram' has no attribute {name!r}")
    globals()[name] = value
    _moved.register_serializables()
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


_moved.install()
