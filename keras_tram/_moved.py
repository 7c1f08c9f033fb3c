"""Module paths of 0.1 that moved, kept importable with a `DeprecationWarning`,
and the registration of the package's serializable classes with Keras.

`import keras_tram.geometry` (or `from keras_tram.tram import TRAM`) finds
the module where it lives now (`keras_tram.pieces.geometry`,
`keras_tram.methods.tram`) and warns once per module; `keras_tram.trust_region`,
split into `references` and `divergences`, is a module holding both. Keras
finds a class named in a `.keras` file by its registered name (`keras_tram>SAM`,
unchanged since 0.1): the classes are registered as soon as Keras is imported,
before or after `keras_tram`, without importing Keras for a package import
that does not need it.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

_PACKAGE = "keras_tram"
_INIT = os.path.join(os.path.dirname(__file__), "__init__.py")
# Old module path (under keras_tram) -> where it lives now.
MOVED = {
    "wrapper": "methods.sharpness_aware",
    "tram": "methods.tram",
    **{name: f"pieces.{name}" for name in (
        "descent", "geometry", "penalty", "radius", "reduction", "reuse", "schedule",
        "selection",
    )},
    **{name: f"experiments.{name}" for name in ("datasets", "pretraining", "recipes", "tiny")},
    "demo": "experiments.demo",
    "demo.catalog": "experiments.demo.catalog",
    "demo.digits": "experiments.demo.digits",
    "demo.lm": "experiments.demo.lm",
    "demo.report": "experiments.demo.report",
    "demo.runner": "experiments.demo.runner",
    "demo.statistics": "experiments.demo.intervals",
}
# Old modules made of several new ones.
SPLIT = {"trust_region": ("pieces.references", "pieces.divergences")}
# Old attributes of the package that now warn.
ATTRIBUTES = ("trust_region",)
# The modules whose import registers every serializable class.
SERIALIZABLES = ("keras_tram.methods", "keras_tram.experiments.recipes")


def _warn(old, new):
    warnings.warn(
        f"`{_PACKAGE}.{old}` moved to {new} in keras-tram 1.0; import it from there "
        f"(the old path will be removed).",
        DeprecationWarning, stacklevel=_caller_level(),
    )


def _caller_level():
    """The stack level of the first frame outside this package's `__init__`,
    this module and the import machinery (which `warnings` skips by itself),
    so that the warning names the line that used the old path."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib"):
            frame = frame.f_back
            continue
        if name not in (__file__, _INIT):
            return level
        frame, level = frame.f_back, level + 1
    return level


def _combined(old):
    module = types.ModuleType(f"{_PACKAGE}.{old}", f"Deprecated: see {SPLIT[old]}.")
    for part in SPLIT[old]:
        source = importlib.import_module(f"{_PACKAGE}.{part}")
        module.__dict__.update(
            {k: v for k, v in vars(source).items() if not k.startswith("__")}
        )
    return module


def attribute(name):
    """A deprecated attribute of the package (`keras_tram.trust_region`)."""
    with warnings.catch_warnings():  # one warning, naming the attribute's line
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(f"{_PACKAGE}.{name}")
    _warn(name, " and ".join(f"`{_PACKAGE}.{p}`" for p in SPLIT[name]))
    return module


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module it became."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(_PACKAGE) + 1:] if fullname.startswith(_PACKAGE + ".") else None
        if old in MOVED or old in SPLIT:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name[len(_PACKAGE) + 1:]
        if old in SPLIT:
            _warn(old, " and ".join(f"`{_PACKAGE}.{p}`" for p in SPLIT[old]))
            return _combined(old)
        new = f"{_PACKAGE}.{MOVED[old]}"
        _warn(old, f"`{new}`")
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


class _AfterKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers the serializable classes once Keras has been imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_serializables()


def register_serializables():
    """Imports the modules that define the serializable classes, once Keras is
    imported, unless a module of the package is half-way through its own
    import (the package's `__getattr__` registers them once it is done)."""
    if "keras" not in sys.modules or all(name in sys.modules for name in SERIALIZABLES):
        return
    if any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith(_PACKAGE + ".")  # not the package: its `__init__` runs this
    ):
        return
    for name in SERIALIZABLES:
        importlib.import_module(name)


def install():
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
    if "keras" in sys.modules:
        register_serializables()
    elif not any(isinstance(finder, _AfterKeras) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())
