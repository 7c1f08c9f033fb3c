"""The backend-specific pieces: taking a gradient of a stateless loss, reading
variable values outside a tape, and the few places where a backend behaves
differently (torch's unseeded dropout, in-place updates, equality checks)."""

import contextlib

import keras

from keras_tram._keras import compat as _compat


def value_and_grad(fn):
    """Returns `f(weights) -> ((value, aux), grads)` for `fn(weights) -> (value, aux)`.

    `weights` is a list of tensors; `grads` matches it one to one. Weights that
    do not reach the value get a zero gradient rather than `None`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.value_and_grad(fn, has_aux=True)
    if backend == "tensorflow":
        return _tensorflow_value_and_grad(fn)
    if backend == "torch":
        return _torch_value_and_grad(fn)
    raise NotImplementedError(
        f"keras-tram supports the tensorflow, jax and torch backends; "
        f"the current Keras backend is {backend!r}."
    )


def _tensorflow_value_and_grad(fn):
    import tensorflow as tf

    def wrapped(weights):
        weights = [tf.convert_to_tensor(w) for w in weights]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(weights)
            value, aux = fn(weights)
        grads = tape.gradient(
            value, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        # An embedding lookup's gradient comes as IndexedSlices; norms,
        # perturbations and element-wise geometry need it dense.
        return (value, aux), [tf.convert_to_tensor(g) for g in grads]

    return wrapped


def _torch_value_and_grad(fn):
    import torch

    def wrapped(weights):
        weights = [w.detach().requires_grad_(True) for w in weights]
        with torch.enable_grad():
            value, aux = fn(weights)
        grads = torch.autograd.grad(value, weights, allow_unused=True)
        grads = [
            torch.zeros_like(w) if g is None else g
            for g, w in zip(grads, weights)
        ]
        # Only what carries a graph: untouched inputs keep their identity.
        detach = lambda t: (
            t.detach() if isinstance(t, torch.Tensor) and t.requires_grad else t
        )
        value = value.detach()
        aux = keras.tree.map_structure(detach, aux)
        return (value, aux), grads

    return wrapped


def fused_global_norm(tensors):
    """The L2 norm of float32 `tensors` taken as one vector, in one fused
    call on torch (where a Keras op per tensor costs more than the norm
    itself); None elsewhere, where the compiler fuses the per-tensor norms."""
    if keras.backend.backend() != "torch" or not tensors:
        return None
    import torch

    return torch.nn.utils.get_total_norm(tensors)


def slow_convolutions_in_branches(model):
    """Whether `model` (compiled) runs its convolutions far slower inside a
    `cond`: XLA on a CPU emits a convolution inside a conditional as plain
    loops, not its fast kernel (a 3×3 convolution's gradient on a 64×32×32×3
    batch: 25 ms, and 260 ms inside `lax.cond`, with JAX 0.10), while
    matrix products keep their speed there. JAX runs a `cond` through XLA
    even uncompiled. Not so on a GPU or TPU, nor in TensorFlow's graph mode
    without XLA, nor on torch."""
    backend = keras.backend.backend()
    if backend == "torch" or (backend == "tensorflow" and not model.jit_compile):
        return False
    if any(not d.lower().startswith("cpu") for d in keras.distribution.list_devices()):
        return False
    convolutions = tuple(
        getattr(keras.layers, name) for name in (
            "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
            "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
            "SeparableConv2D",
        ) if hasattr(keras.layers, name)
    )
    return any(isinstance(layer, convolutions) for layer in _compat.layers_of(model))


def runs_eagerly(model):
    """Whether `model`'s train step runs as Python, step by step (torch
    unless `torch.compile`d, `run_eagerly`), so a tensor's value may decide
    what the step does."""
    if model.run_eagerly:
        return True
    return keras.backend.backend() == "torch" and not model.jit_compile


def dynamic_shapes(model):
    """Whether a step of `model` (compiled) may make tensors whose shape
    depends on values (the rows an embedding lookup touched): on torch, and
    on TensorFlow without XLA; not under XLA (JAX, `jit_compile`, TPUs),
    whose shapes are static."""
    backend = keras.backend.backend()
    if backend == "torch":
        return True
    if backend != "tensorflow" or model.jit_compile:
        return False
    import tensorflow as tf

    return not isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)


def add_scaled(tensors, others, scale):
    """`[t + scale · o]` for two lists of tensors and a float32 scalar tensor,
    each sum in the dtype of `t`; on torch two fused calls for the whole
    list where the dtypes agree."""
    if _fusable(tensors, others) and all(t.dtype == scale.dtype for t in tensors):
        import torch

        return list(torch._foreach_add(tensors, torch._foreach_mul(others, scale)))
    return [
        t + keras.ops.cast(scale * o, t.dtype) for t, o in zip(tensors, others)
    ]


def _fusable(*lists):
    """Whether torch can take these lists of tensors in one `_foreach_*` call
    (every position the same dtype)."""
    if keras.backend.backend() != "torch" or not lists[0]:
        return False
    return all(len({t.dtype for t in group}) == 1 for group in zip(*lists))


def multiply(tensors, others):
    """`[t · o]` for two lists of tensors: one fused call on torch."""
    if _fusable(tensors, others):
        import torch

        return list(torch._foreach_mul(tensors, others))
    return [t * o for t, o in zip(tensors, others)]


def scale(tensors, scalar):
    """`[t · scalar]` for a list of tensors and a scalar tensor of their
    dtype: one fused call on torch."""
    if _fusable(tensors) and all(t.dtype == scalar.dtype for t in tensors):
        import torch

        return list(torch._foreach_mul(tensors, scalar))
    return [t * scalar for t in tensors]


def add(tensors, others):
    """`[t + o]`, each sum in the dtype of `t`: one fused call on torch
    where the dtypes agree."""
    if _fusable(tensors, others):
        import torch

        return list(torch._foreach_add(tensors, others))
    return [t + (o if o.dtype == t.dtype else keras.ops.cast(o, t.dtype))
            for t, o in zip(tensors, others)]


def values_of(variables):
    """Current values of Keras variables as plain tensors, outside any tape."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [tf.convert_to_tensor(v.value) for v in variables]
    if backend == "torch":
        return [v.value.detach() for v in variables]
    return [v.value for v in variables]


def assign(variables, values):
    """`variable.assign(value)` for each pair; on torch one fused copy where
    every value has its variable's dtype and shape, instead of an `assign`
    (conversion, checks, copy) per variable, e.g. per weight of TRAM's
    reference copy."""
    if keras.backend.backend() == "torch" and variables:
        import torch

        targets = [v.value for v in variables]
        values = list(values)
        if all(isinstance(s, torch.Tensor) and s.dtype == t.dtype and s.shape == t.shape
               for s, t in zip(values, targets)):
            torch._foreach_copy_(targets, values)
            return
    for variable, value in zip(variables, values):
        variable.assign(value)


def host_int(value):
    """A scalar integer tensor's value as a Python int, read from this
    process's own copy (a JAX array spread over several processes cannot be
    read whole)."""
    if hasattr(value, "addressable_data"):
        value = value.addressable_data(0)
    return int(value)


def no_grad():
    """A context in which in-place updates of trainable torch tensors are allowed."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def seed_dropout(model):
    """Makes every dropout mask of `model` follow its seed generator's state.

    Keras's torch backend draws unseeded `Dropout` masks from torch's global
    generator, so two passes over the same state would see different masks.
    Marking the generators as seeded (their state is already set) takes the
    seeded path, whose masks are a function of the state. Other backends
    always take that path.
    """
    if keras.backend.backend() != "torch":
        return
    for generator in _compat.seed_generators(model):
        _compat.mark_seeded(generator, int(keras.ops.convert_to_numpy(generator.state)[0]))


def all_equal(tensors, others):
    """Whether two lists of tensors are equal element for element (a bool tensor).

    On torch, `torch.equal` stops at the first difference, so weights that
    moved cost almost nothing to tell apart.
    """
    if keras.backend.backend() == "torch":
        import torch

        equal = all(torch.equal(a, b) for a, b in zip(tensors, others))
        return torch.tensor(equal, device=tensors[0].device if tensors else None)
    flags = [keras.ops.all(keras.ops.equal(a, b)) for a, b in zip(tensors, others)]
    return keras.ops.all(keras.ops.stack(flags))


def _replica_context():
    """The `tf.distribute` replica context of a step run by a strategy with
    several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def replica_sum(values):
    """`values` (a list of tensors) summed over the replicas of a `tf.distribute`
    step; unchanged elsewhere (a JAX `keras.distribution` step already sees
    the global batch, torch has one replica)."""
    context = _replica_context()
    if context is None or not values:
        return list(values)
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, list(values))


def replica_count():
    """How many replicas split the batch: those of a `tf.distribute` step, or
    the devices along the batch axis of a JAX `keras.distribution`."""
    context = _replica_context()
    if context is not None:
        return context.num_replicas_in_sync
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        name = getattr(distribution, "batch_dim_name", None)
        if name is not None:
            mesh = distribution.device_mesh
            return mesh.shape[mesh.axis_names.index(name)]
    return 1


def replica_index():
    """This replica's index among those of a `tf.distribute` step (0 elsewhere)."""
    context = _replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def splits_batch_across_replicas():
    """Whether each replica computes on its own part of the batch (the step
    runs once per replica, as under `tf.distribute`)."""
    return _replica_context() is not None


def merge_call_needed():
    """Whether optimizer updates in this step synchronise replicas through
    `merge_call`, which may not sit inside a replica's `cond`."""
    if _replica_context() is None:
        return False
    import tensorflow as tf

    return not tf.__internal__.distribute.strategy_supports_no_merge_call()


def branch(condition, true_fn, false_fn, select=False):
    """`true_fn()` where `condition` holds, else `false_fn()`: a Python bool
    picks when tracing, a boolean tensor runs one of the two (`ops.cond`).

    With `select`, and under a `tf.distribute` strategy whose collectives go
    through `merge_call` (which may not sit inside a replica's `cond`), both
    run and their results are selected: the same values, without the saving.
    """
    if isinstance(condition, bool):
        return true_fn() if condition else false_fn()
    if select or merge_call_needed():
        return keras.tree.map_structure(
            lambda a, b: keras.ops.where(condition, a, b), true_fn(), false_fn()
        )
    return keras.ops.cond(condition, true_fn, false_fn)


def apply_across_replicas(finite, apply, *values):
    """Runs `apply(*values)` on every replica if `finite` (the same on every
    replica), from the cross-replica context, where a `cond` may synchronise
    replicas (TensorFlow's `merge_call`)."""
    import tensorflow as tf

    def merged(strategy, finite, *values):
        finite = strategy.experimental_local_results(finite)[0]
        keras.ops.cond(
            finite,
            lambda: strategy.extended.call_for_each_replica(apply, args=values),
            lambda: None,
        )

    tf.distribute.get_replica_context().merge_call(merged, args=(finite, *values))


def normal(shape, stddev, dtype, seed_generator):
    """`keras.random.normal`, drawn with Philox on TensorFlow: the
    "auto_select" algorithm Keras leaves TensorFlow to pick runs several
    times slower under XLA on a CPU (7 ms instead of 0.3 ms for 32k draws).
    `stddev` is a number or a scalar tensor."""
    if not isinstance(stddev, (int, float)):
        return normal(shape, 1.0, dtype, seed_generator) * keras.ops.cast(stddev, dtype)
    if keras.backend.backend() != "tensorflow":
        return keras.random.normal(shape, stddev=stddev, dtype=dtype, seed=seed_generator)
    import tensorflow as tf

    seed = seed_generator.next()
    if seed.dtype != tf.int32:  # as Keras does: stateless draws take int32 seeds under XLA
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")
    return tf.random.stateless_normal(shape, seed, stddev=stddev, dtype=dtype, alg="philox")
