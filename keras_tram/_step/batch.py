"""Slicing a batch `(x, y, sample_weight)` of nested inputs by rows."""

import keras
from keras import ops


def size(x):
    """The number of examples in a batch: the first dimension of its first input."""
    return ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


def rows(structure, start, stop):
    """Rows `start:stop` of every array in `structure` (None stays None)."""
    return keras.tree.map_structure(lambda t: None if t is None else t[start:stop], structure)
