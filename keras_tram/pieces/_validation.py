"""Argument checks with messages that name the argument and what is allowed."""

import math
import numbers

import keras
import numpy as np


def scalar(value):
    """A 0-d NumPy array of numbers (what `train_on_batch` returns for a
    logged value on some Keras versions) as its number; anything else as it
    is."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return value.item()
    return value


def check_non_negative(name, value):
    """Returns `value` as a float, or raises if it is not a finite number >= 0."""
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a finite number >= 0; received {value!r} "
            f"of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; received {value!r}.")
    return value


def check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a `keras.Model` (Sequential, functional or "
            f"subclassed); received {model!r} of type {type(model).__name__}."
        )
    return model


def check_instance(name, value, cls):
    if not isinstance(value, cls):
        raise TypeError(
            f"`{name}` must be a `{cls.__module__}.{cls.__name__}`; received "
            f"{value!r} of type {type(value).__name__}."
        )
    return value


def check_unit_interval(name, value):
    """Returns `value` as a float, or raises if it is not in [0, 1]."""
    value = check_non_negative(name, value)
    if value > 1:
        raise ValueError(f"`{name}` must be in [0, 1]; received {value!r}.")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; "
            f"received {value!r}."
        )
    return value


def check_positive_int(name, value):
    """Returns `value`, or raises if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer >= 1; received {value!r} of type "
            f"{type(value).__name__}."
        )
    if value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {value!r}.")
    return int(value)


def check_fraction(name, value):
    """Returns `value` as a float, or raises if it is not in (0, 1]."""
    value = check_non_negative(name, value)
    if not 0 < value <= 1:
        raise ValueError(f"`{name}` must be in (0, 1]; received {value!r}.")
    return value
