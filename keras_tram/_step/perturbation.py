"""The perturbed weights `θ + ε`: over the selected weights only, and on
embedding tables over the rows the batch looked up.

An embedding table's gradient is zero on every row the batch did not look up
(a batch of 1,024 tokens touches at most 1,024 of XLM-R's 250,002 rows), and
so is `ε` wherever the geometry makes `ε` zero with the gradient (SAM's,
ASAM's and FSAM's: `geometry.Geometry.zero_with_gradient`). Where a step may
make shapes that depend on values (torch; TensorFlow without XLA), the
geometry then runs on the touched rows of a table, which add to its norms
exactly what the whole table adds, and the perturbed table is the table with
those rows moved: the same numbers without the element-wise passes over the
rest. Under XLA (JAX, TensorFlow with `jit_compile`) shapes are static, and
the compiler already fuses `θ + ε` into the lookup of the next pass (on
full-size XLM-R with JAX, a step costs the same whether the table is
perturbed or not), so tables stay dense there.

A table is the trainable `embeddings` of a `keras.layers.Embedding`
(keras-hub's `ReversibleEmbedding` included). One that is also the output
projection (GPT-2's tied weights) has a gradient on every row; a step in which
more than half of a table's rows are touched perturbs the tables densely.
"""

import functools

import keras
from keras import ops

from keras_tram._keras import compat as _compat
from keras_tram._ops import backend as _backend
from keras_tram.pieces import geometry as geometry_lib


class Perturbation:
    """Lays `ε` onto the weights.

    Args:
        perturbed: the positions of the weights the geometry perturbs, or
            None for all of them (`keras_tram.selection`).
        tables: the positions, among those, of embedding tables (`tables`).
        relative: whether a step logs `relative_perturbation`, `‖ε‖ / ‖θ‖`
            (`log_relative_perturbation` of the wrapper).
    """

    def __init__(self, perturbed=None, tables=(), relative=False):
        self.perturbed = None if perturbed is None else tuple(perturbed)
        self.tables = tuple(tables)
        self.relative = relative

    def statistics(self, epsilon_norm, weights):
        """What the perturbation logs: `{"relative_perturbation": ‖ε‖ / ‖θ‖}`
        if asked for, from `apply`'s `‖ε‖`."""
        if not self.relative:
            return {}
        norm = geometry_lib.global_norm(weights)
        return {"relative_perturbation": epsilon_norm * geometry_lib.safe_reciprocal(norm)}

    def apply(self, geometry, grads, weights, radius, grad_norm=None, row_wise=False):
        """`(θ + ε, ‖ε‖)`: every weight, the perturbed ones moved (a table's
        touched rows only when `row_wise` and at most half of its rows are
        touched), and the norm of `ε` if `relative` (else None). `grad_norm`,
        the norm of every gradient, is used only when every weight is
        perturbed."""
        if self.perturbed is None:
            positions = range(len(weights))
            grads, moving = list(grads), list(weights)
        else:
            positions, grad_norm = self.perturbed, None
            grads = [grads[i] for i in positions]
            moving = [weights[i] for i in positions]
        move = functools.partial(
            self._apply, geometry, grads, moving, weights, radius, grad_norm, self.relative
        )
        if not (row_wise and geometry.zero_with_gradient and self.tables):
            return move({})
        rows = {j: touched_rows(grads[j]) for j in self.tables}
        # A table that is also an output projection (tied weights) has a
        # gradient on every row: its rows would cost more than the table.
        few = ops.all(ops.stack([
            2 * ops.shape(rows[j])[0] <= ops.shape(grads[j])[0] for j in self.tables
        ]))
        return ops.cond(few, lambda: move(rows), lambda: move({}))

    def _apply(self, geometry, grads, moving, weights, radius, grad_norm, norm, rows):
        grads, moving = list(grads), list(moving)
        for j, touched in rows.items():
            grads[j] = ops.take(grads[j], touched, axis=0)
            moving[j] = ops.take(moving[j], touched, axis=0)
        epsilon = geometry.perturbation(grads, moving, radius, grad_norm)
        moved = _backend.add(moving, epsilon)
        positions = range(len(weights)) if self.perturbed is None else self.perturbed
        for j, touched in rows.items():
            table = weights[positions[j]]
            moved[j] = ops.scatter_update(table, ops.expand_dims(touched, 1), moved[j])
        epsilon_norm = geometry_lib.global_norm(epsilon) if norm else None
        if self.perturbed is None:
            return moved, epsilon_norm
        perturbed = list(weights)
        for i, value in zip(positions, moved):
            perturbed[i] = value
        return perturbed, epsilon_norm


def touched_rows(grad):
    """The indices of the rows of a 2-D gradient with an element that is not
    0 (NaN counts), in increasing order; a shape that depends on values."""
    return ops.nonzero(ops.any(grad, axis=1))[0]


def tables(model, positions=None):
    """The positions, among the perturbed trainable weights of `model`
    (`positions`, None for all), of the embedding tables whose gradient is
    zero on the rows a batch does not look up."""
    ids = {
        id(layer.embeddings) for layer in _compat.layers_of(model)
        if isinstance(layer, keras.layers.Embedding) and layer.built
        # With LoRA, `embeddings` is the frozen table plus a product.
        and isinstance(layer.embeddings, keras.Variable)
    }
    variables = model.trainable_variables
    if positions is not None:
        variables = [variables[i] for i in positions]
    return [j for j, v in enumerate(variables) if id(v) in ids and len(v.shape) == 2]
