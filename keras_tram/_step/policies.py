"""How a step is laid over the batch and the replicas, chosen once when the
wrapper is built: which parts of the batch get a perturbation of their own
(`WholeBatch`, `Chunks`), and which replicas share one (`Shared`,
`PerReplica`). Each reads the replica context when the step is traced, as
`tf.distribute` and `keras.distribution` set it."""

from typing import Any
from typing import NamedTuple

from keras import ops

from keras_tram._ops import backend as _backend
from keras_tram._step import batch as _batch
from keras_tram.pieces import geometry as geometry_lib


class Part(NamedTuple):
    """A part of the batch, perturbed from its own gradient and radius."""

    x: Any
    y: Any
    sample_weight: Any
    fraction: Any = None  # its share of the batch (None: the whole batch)
    rows: Any = None  # `(start, size)`: its first row and the batch's size


class WholeBatch:
    """One perturbation for the whole batch."""

    def parts(self, x, y, sample_weight):
        return [Part(x, y, sample_weight)]


class Chunks:
    """`count` consecutive parts, each perturbed on its own (and, with
    `per_replica` where one step sees every replica's batch, as JAX's
    `keras.distribution` does, `count` parts per replica)."""

    def __init__(self, count, per_replica=False):
        self.count = count
        self.per_replica = per_replica

    def parts(self, x, y, sample_weight):
        count = self.count
        if self.per_replica and not _backend.splits_batch_across_replicas():
            count *= _backend.replica_count()
        if count == 1:
            return [Part(x, y, sample_weight)]
        return split(x, y, sample_weight, count)


def split(x, y, sample_weight, count):
    """`count` consecutive `Part`s of a batch: sizes differ by at most one."""
    size = _batch.size(x)
    if isinstance(size, int) and size < count:
        raise ValueError(
            f"`perturbation_chunks` splits each batch into {count} parts, but a "
            f"batch has only {size} examples. Use larger batches or fewer chunks."
        )
    parts = []
    for k in range(count):
        start, stop = (k * size) // count, ((k + 1) * size) // count
        fraction = ops.cast(stop - start, "float32") / ops.cast(size, "float32")
        parts.append(Part(*_batch.rows((x, y, sample_weight), start, stop), fraction,
                          (start, size)))
    return parts


def mean_gradient(scaled_grads, part, scaling, scope):
    """`g`, the gradient of the mean loss over the batch a perturbation is
    for, in float32, from a part's loss-scaled gradients: loss scaling (if the
    optimizer expects scaled gradients, `scaling`) and the part's weight
    undone, and summed over the replicas that share the perturbation
    (`scope`)."""
    grads = geometry_lib.as_float32(scaled_grads)
    unscale = scaling.loss_scale if scaling.unscale else None
    if part.fraction is not None:
        unscale = part.fraction if unscale is None else unscale * part.fraction
    if unscale is not None:
        grads = [g / unscale for g in grads]
    if not _backend.splits_batch_across_replicas():
        return grads
    return scope.gradient(grads)


class Shared:
    """Every replica takes the perturbation of the global batch: `g` and `d`
    are summed over the replicas before perturbing."""

    def sum(self, values):
        """The sum over the replicas that share a perturbation."""
        return _backend.replica_sum(values)

    def gradient(self, grads):
        """This replica's mean-loss gradient (each replica's loss is scaled
        by 1 / replicas so that the optimizer's sum is the mean) as the
        perturbation takes it: the global batch's."""
        return _backend.replica_sum(grads)


class PerReplica:
    """Each replica perturbs from its own part of the batch (the original
    SAM's m-sharpness); also the scope of a method without a perturbation,
    whose `g` only gives the logged norm (the replicas' mean norm)."""

    def sum(self, values):
        return list(values)

    def gradient(self, grads):
        # Undo the 1 / replicas of each replica's loss: this replica's mean.
        replicas = float(_backend.replica_count())
        return [g * replicas for g in grads]
