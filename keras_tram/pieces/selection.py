"""Which trainable weights a perturbation moves (`perturb=`).

Left-out weights get `ε = 0` and are left out of every norm of the geometry
(`‖g‖`, `‖T g‖`, `gᵀ D g`); they still descend along the gradient taken at
the perturbed point, as every trainable weight does.

`perturb` is one of:

- `"all"` (the default): every trainable weight;
- `"no_bias_norm"`: all but the biases (variables named `bias`) and the
  weights of normalization layers (`BatchNormalization`,
  `LayerNormalization`, `GroupNormalization`, `RMSNormalization`, and any
  layer class whose name ends in `Normalization` or `Norm`, keras-hub's
  own included), as the original ASAM code perturbs;
- `"norm_only"`: the weights of normalization layers only (SAM-ON, Mueller
  et al., 2023);
- a callable `variable -> bool`;
- a list of the model's trainable variables, or of their `path`s (a path
  may leave out the names of the models around the layer: `"dense/kernel"`).

    >>> import keras
    >>> from keras_tram import selection
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                           keras.layers.LayerNormalization()])
    >>> [v.name for v in selection.selected(model, "no_bias_norm")]
    ['kernel']
    >>> [v.name for v in selection.selected(model, "norm_only")]
    ['gamma', 'beta']
"""

import re

import keras

from keras_tram._keras import compat as _compat
from keras_tram.pieces._component import _deserialize
from keras_tram.pieces._component import _is_serialized

SELECTIONS = ("all", "no_bias_norm", "norm_only")
_NORMALIZATIONS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
) + ((keras.layers.RMSNormalization,) if hasattr(keras.layers, "RMSNormalization") else ())
_NORMALIZATION_NAME = re.compile(r"(Normalization|Norm)$")
_BIAS_NAME = re.compile(r"(^|_)bias$")


class Selection:
    """A `perturb=` argument, checked, held where Keras does not track it (a
    list of variables set on a layer would become the layer's own)."""

    def __init__(self, perturb):
        self.perturb = check(perturb)

    def positions(self, model):
        return positions(model, self.perturb)

    def get_config(self):
        return serialize(self.perturb)


def check(perturb):
    """`perturb` if it is a valid selection (a serialized callable is
    deserialized); raises naming the argument otherwise."""
    if _is_serialized(perturb):
        perturb = _deserialize(perturb)
    if isinstance(perturb, str):
        if perturb not in SELECTIONS:
            raise ValueError(
                f"`perturb` must be one of {', '.join(repr(s) for s in SELECTIONS)}, a "
                f"callable `variable -> bool` or a list of trainable variables; "
                f"received {perturb!r}."
            )
        return perturb
    if isinstance(perturb, (list, tuple)):
        for item in perturb:
            if not isinstance(item, (str, keras.Variable)):
                raise TypeError(
                    "`perturb`, as a list, must hold trainable variables of the model "
                    f"or their paths; received {item!r} of type {type(item).__name__}."
                )
        return list(perturb)
    if callable(perturb) and not isinstance(perturb, keras.Variable):
        return perturb
    raise TypeError(
        f"`perturb` must be one of {', '.join(repr(s) for s in SELECTIONS)}, a callable "
        f"`variable -> bool` or a list of trainable variables; received {perturb!r} of "
        f"type {type(perturb).__name__}."
    )


def is_normalization(layer):
    return isinstance(layer, _NORMALIZATIONS) or bool(
        _NORMALIZATION_NAME.search(type(layer).__name__)
    )


def is_bias(variable):
    return bool(_BIAS_NAME.search(variable.name))


def selected(model, perturb):
    """The trainable variables of `model` that `perturb` selects, in order."""
    perturb = check(perturb)
    variables = list(model.trainable_variables)
    if perturb == "all":
        return variables
    if isinstance(perturb, str):
        norms = {
            id(v) for layer in _compat.layers_of(model) if is_normalization(layer)
            for v in layer.trainable_weights
        }
        if perturb == "norm_only":
            keep = [v for v in variables if id(v) in norms]
        else:
            keep = [v for v in variables if id(v) not in norms and not is_bias(v)]
    elif isinstance(perturb, list):
        ids = {id(v) for v in variables}
        wanted, unknown = set(), []
        for item in perturb:
            if isinstance(item, str):
                matches = {id(v) for v in variables if _same_path(v.path, item)}
            else:
                matches = {id(item)} & ids
            if not matches:
                unknown.append(getattr(item, "path", item))
            wanted |= matches
        if unknown:
            raise ValueError(
                "`perturb` names variables that are not trainable variables of the "
                f"model: {unknown}; its trainable variables are "
                f"{[v.path for v in variables]}."
            )
        keep = [v for v in variables if id(v) in wanted]
    else:
        keep = [v for v in variables if _as_bool(perturb(v), v)]
    if not keep:
        raise ValueError(
            f"`perturb`={perturb!r} selects none of the model's {len(variables)} "
            "trainable weights: nothing would be perturbed. Select at least one, "
            "or use a plain optimizer."
        )
    return keep


def positions(model, perturb):
    """The positions in `model.trainable_variables` of the selected weights,
    or None when every one is selected."""
    keep = {id(v) for v in selected(model, perturb)}
    variables = model.trainable_variables
    if len(keep) == len(variables):
        return None
    return [i for i, v in enumerate(variables) if id(v) in keep]


def _same_path(path, name):
    """Whether a variable's `path` is `name`, one ending in `/name`, or the end
    of `name` (a variable's path has its model's name in front of it or not,
    depending on when the layer was built)."""
    return path == name or path.endswith("/" + name) or name.endswith("/" + path)


def serialize(perturb):
    """`perturb` as it goes into a config: a name, a list of paths, or the
    callable serialized by Keras."""
    if isinstance(perturb, str):
        return perturb
    if isinstance(perturb, list):
        return [item if isinstance(item, str) else item.path for item in perturb]
    return keras.saving.serialize_keras_object(perturb)


def _as_bool(value, variable):
    if not isinstance(value, bool) and not (
        hasattr(value, "dtype") and getattr(value, "shape", None) == ()
    ):
        raise TypeError(
            "`perturb`, as a callable, must return True or False for each trainable "
            f"variable; for {variable.path} it returned {value!r}."
        )
    return bool(value)
