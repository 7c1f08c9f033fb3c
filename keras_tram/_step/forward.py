"""The model's pass in training mode at given weights, from a given state, on
clean or noised inputs: what every pass of a step and every reference's
prediction goes through."""

import contextlib

import keras

from keras_tram._keras import compat as _compat
from keras_tram._step import noise as _noise


class Forward:
    """`(y_pred, non_trainable, losses)` of the wrapper's model at `weights`.

    A pass with `precise=True` runs the layers that compute in a lower
    precision than their variables (mixed precision) in their variables'
    dtype.

    Args:
        model: the wrapper (its `stateless_call` runs the wrapped model).
    """

    def __init__(self, model):
        self.model = model
        self._reduced = _compat.reduced_precision_layers(model)

    @property
    def reduces_precision(self):
        """Whether some layer computes in a lower precision than its variables."""
        return bool(self._reduced)

    def __call__(self, weights, non_trainable, x, noise=None, rows=None, precise=False):
        with self._precision(precise):
            return self.model.stateless_call(
                weights, non_trainable, x, training=True, return_losses=True
            )

    def _precision(self, precise):
        if precise and self._reduced:
            return _compat.computing_in_variable_dtype(self._reduced)
        return contextlib.nullcontext()

    def keep_seed(self, values, old_values):
        """`values` of the non-trainable variables after a part of the batch,
        the noise seed as it was before the step (every part draws its noise
        from the same seed)."""
        return values

    def seed_updates(self, step):
        """`{id(variable): value}`: the noise seed moved on after the step."""
        return {}


class NoisedForward(Forward):
    """A `Forward` that may add input noise (`references.NoisedInputs`),
    drawn from `seed_generator`, whose state is the non-trainable variable at
    `position`."""

    def __init__(self, model, seed_generator, position):
        super().__init__(model)
        self.seed_generator = seed_generator
        self.position = position
        self.noise = _noise.InputNoise(model.model, seed_generator)

    def __call__(self, weights, non_trainable, x, noise=None, rows=None, precise=False):
        if noise is None:
            return super().__call__(weights, non_trainable, x, precise=precise)
        seed = non_trainable[self.position]
        with self.noise.applied(noise, x, seed, rows) as inputs, self._precision(precise):
            return self.model.stateless_call(
                weights, non_trainable, inputs, training=True, return_losses=True
            )

    def keep_seed(self, values, old_values):
        return [old if i == self.position else value
                for i, (value, old) in enumerate(zip(values, old_values))]

    def seed_updates(self, step):
        seed = self.seed_generator.state
        with keras.StatelessScope(state_mapping=[(seed, step.value_of(seed))]) as scope:
            self.seed_generator.next()
        return {id(seed): scope.get_current_value(seed)}
