"""Input noise: where it goes in a model and how it is drawn.

`z ~ N(0, σ²)` goes on a batch's float inputs or, for token-id models, on
the output of an embedding layer. Everything one noised pass needs is an
argument (`InputNoise.applied(noise, inputs, seed, rows)`), the seed state
included: every pass of a step draws the same noise, and nothing is left on
the model between passes.
"""

import contextlib
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from keras_tram._keras import compat as _compat
from keras_tram._ops import backend as _backend


def is_float(tensor):
    return tensor is not None and "float" in keras.backend.standardize_dtype(tensor.dtype)


def has_float(inputs):
    """Whether any leaf of `inputs` is a float tensor."""
    return any(is_float(t) for t in keras.tree.flatten(inputs))


def find_layer(model, noise_layer, inputs_are_float):
    """The layer of `model` whose output gets the noise, or None for the inputs.

    `noise_layer` is a layer, a layer's name, or None: then the inputs when
    some are float, else a keras-hub backbone's `token_embedding` or the
    first `keras.layers.Embedding`.
    """
    if isinstance(noise_layer, keras.layers.Layer):
        return noise_layer
    layers = _compat.layers_of(model)
    if isinstance(noise_layer, str):
        for layer in layers:
            if layer.name == noise_layer:
                return layer
        raise ValueError(
            f"`noise_layer`={noise_layer!r} is not a layer of the model; "
            f"its layers are {[layer.name for layer in layers]}."
        )
    if inputs_are_float:
        return None
    for layer in layers:
        embedding = getattr(layer, "token_embedding", None)
        if isinstance(embedding, keras.layers.Layer):
            return embedding
    for layer in layers:
        if isinstance(layer, keras.layers.Embedding):
            return layer
    raise ValueError(
        "Input noise needs float inputs, or an embedding layer to add it to: "
        "the model takes no float input and has no `token_embedding` or "
        "`keras.layers.Embedding`. Name the layer with `noise_layer=`."
    )


class Scaled(NamedTuple):
    """Input noise as a `references.NoisedInputs` gives it, its standard
    deviation a scalar tensor (0 turns it off without a second trace)."""

    stddev: Any
    noise_layer: Any


def scaled(noise, factor):
    """`noise` (a `NoisedInputs`) with its standard deviation times `factor`."""
    return Scaled(noise.stddev * factor, noise.noise_layer)


def on_full_steps(noise, full):
    """`noise` (or None) where `full` is True; where it is a boolean tensor
    (a method that runs the full step on some updates only), the noise with
    its standard deviation 0 on the others."""
    if noise is None or full is True:
        return noise
    return scaled(noise, ops.cast(full, "float32"))


class InputNoise:
    """Draws input noise for `model` from `seed_generator`.

    The noise is drawn for the whole batch (of every replica), and each part
    of it (a chunk, a replica) takes its own rows: splitting a batch changes
    no example's noise.
    """

    def __init__(self, model, seed_generator):
        self.model = model
        self.seed_generator = seed_generator

    def add(self, tensor, stddev, seed, rows=None):
        """`tensor + z`, `z` drawn from the seed state `seed` (the generator's
        own state is left as it is); `rows` is `(start, total)` when `tensor`
        holds rows `start:start + len(tensor)` of a batch of `total`."""
        size = ops.shape(tensor)[0]
        start, total = rows or (0, size)
        if _backend.splits_batch_across_replicas():
            start = start + _backend.replica_index() * total
            total = total * _backend.replica_count()
        with keras.StatelessScope(state_mapping=[(self.seed_generator.state, seed)]):
            z = _backend.normal(
                (total, *ops.shape(tensor)[1:]), stddev, tensor.dtype, self.seed_generator
            )
        if total is not size:
            z = z[start:start + size]
        return ops.add(tensor, z)  # `tensor` may still be a NumPy array (torch, eager)

    @contextlib.contextmanager
    def applied(self, noise, inputs, seed, rows=None):
        """Within this context, calls of the model see `noise` (a
        `references.NoisedInputs`, or None for none); yields the inputs to
        call it on (noised, when the noise goes on the inputs)."""
        if noise is None:
            yield inputs
            return
        layer = find_layer(self.model, noise.noise_layer, has_float(inputs))
        if layer is None:
            yield keras.tree.map_structure(
                lambda t: self.add(t, noise.stddev, seed, rows) if is_float(t) else t, inputs
            )
            return
        original = layer.call

        def noisy_call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            if kwargs.get("reverse"):  # a tied embedding projecting to logits
                return outputs
            return self.add(outputs, noise.stddev, seed, rows)

        # An instance attribute shadows the class's `call` for this pass only.
        object.__setattr__(layer, "call", noisy_call)
        try:
            yield inputs
        finally:
            object.__delattr__(layer, "call")
