"""Preprocessing for wrapped keras-hub tasks: the `Pipeline` mixin.

A keras-hub task maps its `preprocessor` over the data in its own `fit`,
`evaluate` and `predict` (raw strings or images in, token ids or pixels out),
as keras-hub's `PipelineModel` does. The wrapper's methods run instead of the
task's, so they do the same: the batches are made with `tf.data` and the
task's `preprocess_samples` is mapped over them.
"""

import inspect

import keras
import numpy as np


class Pipeline:
    """`fit`, `evaluate`, `predict` and the `*_on_batch` methods of a model
    whose `self.model` may be a keras-hub task with a preprocessor: its
    preprocessing runs first; without one, Keras's own methods run as they
    are."""

    def fit(self, *args, **kwargs):
        preprocess = preprocessing_of(self.model)
        if preprocess is None:
            return super().fit(*args, **kwargs)
        arguments = _arguments(super().fit, args, kwargs)
        fraction = arguments.pop("validation_split", 0.0)
        if fraction and arguments.get("validation_data") is None:
            data = tuple(arguments.pop(k, None) for k in ("x", "y", "sample_weight"))
            data, validation = split(data, fraction)
            arguments.update(zip(("x", "y", "sample_weight"), data))
            arguments["validation_data"] = validation
        batch_size = arguments.pop("batch_size", None)
        x = arguments.pop("x", None)
        shuffle = False
        if not is_dataset(x):
            shuffle = bool(arguments.pop("shuffle", True))
            arguments["shuffle"] = False  # the dataset shuffles instead
        arguments["x"] = dataset(
            preprocess, x, arguments.pop("y", None), arguments.pop("sample_weight", None),
            batch_size, shuffle=shuffle,
        )
        validation = arguments.get("validation_data")
        if validation is not None:
            if not is_dataset(validation):
                validation = keras.utils.unpack_x_y_sample_weight(validation)
                validation = dataset(preprocess, *validation, batch_size)
            else:
                validation = dataset(preprocess, validation)
            arguments["validation_data"] = validation
        return super().fit(**arguments)

    def evaluate(self, *args, **kwargs):
        preprocess = preprocessing_of(self.model)
        if preprocess is None or kwargs.get("_use_cached_eval_dataset"):
            return super().evaluate(*args, **kwargs)
        arguments = _arguments(super().evaluate, args, kwargs)
        arguments["x"] = dataset(
            preprocess, *(arguments.pop(k, None) for k in
                          ("x", "y", "sample_weight", "batch_size")),
        )
        return super().evaluate(**arguments)

    def predict(self, *args, **kwargs):
        preprocess = preprocessing_of(self.model)
        if preprocess is None:
            return super().predict(*args, **kwargs)
        arguments = _arguments(super().predict, args, kwargs)
        arguments["x"] = dataset(
            preprocess, arguments.pop("x", None), batch_size=arguments.pop("batch_size", None),
        )
        return super().predict(**arguments)

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._preprocessed(x, y, sample_weight)
        return super().train_on_batch(x, y, sample_weight, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._preprocessed(x, y, sample_weight)
        return super().test_on_batch(x, y, sample_weight, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(self._preprocessed(x)[0])

    def _preprocessed(self, x, y=None, sample_weight=None):
        preprocess = preprocessing_of(self.model)
        if preprocess is None:
            return x, y, sample_weight
        return keras.utils.unpack_x_y_sample_weight(preprocess(x, y, sample_weight))


def preprocessing_of(model):
    """The model's `preprocess_samples`, or None when it has no preprocessor."""
    if getattr(model, "preprocessor", None) is None:
        return None
    return getattr(model, "preprocess_samples", None)


def _tf():
    try:
        import tensorflow as tf
    except ImportError as error:  # keras-hub's text preprocessing needs it too
        raise ImportError(
            "Preprocessing data for a keras-hub task needs TensorFlow (`pip install "
            "tensorflow`); or preprocess the data yourself and pass the "
            "task's inputs, e.g. `task.preprocessor(x)`."
        ) from error
    return tf


def is_dataset(data):
    """Whether `data` is a dataset (as opposed to arrays or a tuple of them)."""
    if isinstance(data, keras.utils.PyDataset) or callable(getattr(data, "__next__", None)):
        return True
    tf = _tf()
    return isinstance(data, tf.data.Dataset)


def dataset(preprocess, x, y=None, sample_weight=None, batch_size=None, shuffle=False):
    """`x`, `y`, `sample_weight` batched and preprocessed, as a `tf.data.Dataset`.

    Arrays are shuffled anew every epoch when `shuffle` (as `fit` shuffles
    them). A `tf.data.Dataset` is preprocessed as it comes (it is already batched);
    other datasets (`keras.utils.PyDataset`, generators) are taken to yield
    the model's inputs and returned unchanged.
    """
    tf = _tf()
    if isinstance(x, tf.data.Dataset):
        for name, value in (("y", y), ("sample_weight", sample_weight),
                            ("batch_size", batch_size)):
            if value is not None:
                raise ValueError(f"`{name}` must be None when `x` is a tf.data.Dataset.")
    elif is_dataset(x):
        return x
    else:
        data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        data = _map_leaves(lambda leaf: _as_sliceable(tf, leaf), data)
        x = tf.data.Dataset.from_tensor_slices(data)
        if shuffle:
            x = x.shuffle(x.cardinality(), reshuffle_each_iteration=True)
        x = x.batch(batch_size or 32)
    return x.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def split(data, validation_split):
    """The first and last `validation_split` of array data, as Keras splits it."""
    leaves = []
    _map_leaves(leaves.append, data)
    size = min(len(leaf) for leaf in leaves if leaf is not None)
    cut = int(size * (1.0 - validation_split))
    if cut in (0, size):
        raise ValueError(
            f"`validation_split`={validation_split} leaves no data on one side "
            f"of the split of {size} samples."
        )

    def part(start, stop):
        return _map_leaves(
            lambda leaf: None if leaf is None else leaf[start:stop], data
        )

    return part(0, cut), part(cut, size)


def _map_leaves(fn, data):
    """Maps over tuples and dicts, as `tf.data` slices them: a list is a leaf."""
    if isinstance(data, tuple):
        return tuple(_map_leaves(fn, part) for part in data)
    if isinstance(data, dict):
        return {key: _map_leaves(fn, part) for key, part in data.items()}
    return fn(data)


def _as_sliceable(tf, leaf):
    if leaf is None or isinstance(leaf, (list, np.ndarray)) or tf.is_tensor(leaf):
        return leaf
    return keras.ops.convert_to_numpy(leaf)


def _arguments(method, args, kwargs):
    """The arguments of a call to a Keras method, by name."""
    signature = inspect.signature(method)
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments
