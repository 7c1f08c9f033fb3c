"""Every use of Keras's private API in keras-tram, in one place.

Each function names the private attribute it reads. Everything else in the
package uses public Keras API only (`tests/integration/test_layout.py`
checks that `keras.src` and these names appear nowhere else).

Checked on Keras 3.8.0 (the floor, CI's floor job) to 3.15.1
(`versions.OLDEST`, `versions.NEWEST_CHECKED`). On a newer Keras that has
dropped an attribute read here, the function raises `KerasChanged`, naming
the attribute and the installed version, instead of training wrongly.
"""

import contextlib

import keras

from keras_tram._keras import versions

CHECKED_ON = (versions.OLDEST, versions.NEWEST_CHECKED)


class KerasChanged(RuntimeError):
    """The installed Keras lacks a private attribute keras-tram reads."""


def missing(what):
    """The `KerasChanged` for a private Keras name `what` that is gone."""
    return KerasChanged(
        f"keras-tram reads Keras's private `{what}`, which {versions.describe()} "
        f"does not have. Install a Keras in that range (pip install "
        f"'keras<={versions.NEWEST_CHECKED}'), or a keras-tram release that supports "
        "this Keras."
    )


def private(owner, name, kind=None):
    """`owner.name`, a private Keras attribute, or `KerasChanged` naming it
    (as `kind.name`: the owner's class by default) and the installed Keras."""
    try:
        return getattr(owner, name)
    except AttributeError:
        if kind is None:
            kind = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        raise missing(f"{kind}.{name}") from None


try:  # keras/src/losses/loss.py, 3.8.0 to 3.15.1.
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:
    def unscale_loss_for_distribution(loss):
        raise missing("keras.src.losses.loss.unscale_loss_for_distribution")


def layers_of(model):
    """Every layer of `model`, itself and nested ones included
    (`Layer._flatten_layers`)."""
    return list(private(model, "_flatten_layers")())


def seed_generators(model):
    """The seed generators of every layer of `model` (`Layer._seed_generators`)."""
    return [
        generator
        for layer in layers_of(model)
        for generator in private(layer, "_seed_generators")
    ]


def reduced_precision_layers(model):
    """The layers of `model` whose dtype policy computes in a lower precision
    than their variables are kept in (`mixed_float16`, `mixed_bfloat16`;
    quantized layers, and layers whose policy is a `DTypePolicyMap`,
    excepted), with that policy."""
    found = []
    policy_map = getattr(keras.dtype_policies, "DTypePolicyMap", ())
    for layer in layers_of(model):
        policy = layer.dtype_policy
        if isinstance(policy, policy_map) or policy.quantization_mode is not None:
            continue  # (a map is a quantized model's; its layers keep theirs)
        compute, variable = policy.compute_dtype, policy.variable_dtype
        if compute != variable and "float" in compute and "float" in variable:
            found.append((layer, policy))
    return found


@contextlib.contextmanager
def computing_in_variable_dtype(layers):
    """Runs `layers` (`reduced_precision_layers`) in the dtype of their
    variables while the context is open: each layer's `dtype_policy` is set
    to its variable dtype and put back on leaving."""
    try:
        for layer, policy in layers:
            layer.dtype_policy = policy.variable_dtype
        yield
    finally:
        for layer, policy in layers:
            layer.dtype_policy = policy


def mark_seeded(generator, seed):
    """Makes `generator` count as seeded (`SeedGenerator._initial_seed`): torch
    dropout then draws its mask from the generator's state."""
    if private(generator, "_initial_seed") is None:
        generator._initial_seed = seed


def own_variables(layer):
    """The variables `layer` created itself, not its sublayers'
    (`Layer._trainable_variables`, `Layer._non_trainable_variables`), as
    `Layer.save_own_variables` saves them."""
    return private(layer, "_trainable_variables") + private(layer, "_non_trainable_variables")


def loss_tracker(model):
    """The metric behind the `loss` entry of the logs (`Trainer._loss_tracker`)."""
    return private(model, "_loss_tracker")


def stateless_compute_loss(model, losses, trainable, non_trainable, metrics, x, y,
                           y_pred, sample_weight):
    """`model.stateless_compute_loss` with the layer losses of the forward
    pass that gave `y_pred` (`Layer._losses_override`, set and cleared around
    the call as Keras's own JAX trainer does).

    Returns `(loss, non_trainable, metrics)`.
    """
    private(model, "_losses_override")  # Keras reads it: it must be there
    model._losses_override = list(losses)
    try:
        loss, (_, non_trainable, metrics) = model.stateless_compute_loss(
            trainable, non_trainable, metrics, x=x, y=y, y_pred=y_pred,
            sample_weight=sample_weight, training=True,
        )
    finally:
        model._losses_override = []
    return loss, non_trainable, metrics


def inner_optimizer(optimizer):
    """The optimizer that applies the updates: a `LossScaleOptimizer`'s
    `inner_optimizer`, any other optimizer itself. Its counters say which
    update a step belongs to (Keras 3.8's `LossScaleOptimizer.iterations` is
    the wrapper's own counter, which stays at 0; 3.9 and later return the
    inner optimizer's), and its learning rate is the one applied."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def train_function_around(model, make, step):
    """The train function Keras's `make(force=True)` (its trainer's
    `make_train_function`) makes around `step` instead of
    `model.train_step`, which Keras reads when it makes the function (3.8.0
    to 3.15.1): `model.train_step` is `step` while it does, then what it was
    before. A Keras that read the class's `train_step` instead would make
    both around the step that decides for itself: the same numbers, without
    the saving."""
    shadowed = model.__dict__.get("train_step")  # an instance's own, if any
    object.__setattr__(model, "train_step", step)
    try:
        make(force=True)
    finally:
        if shadowed is None:
            object.__delattr__(model, "train_step")
        else:
            object.__setattr__(model, "train_step", shadowed)
    return model.train_function


def micro_steps(optimizer):
    """The optimizer's count of calls to `apply`, accumulating ones included
    (`BaseOptimizer._iterations`; `iterations` counts applied updates when
    accumulating gradients)."""
    return private(inner_optimizer(optimizer), "_iterations")


def initial_learning_rate(optimizer):
    """The learning rate of the optimizer's update 0: its schedule at 0, else
    its learning rate (`BaseOptimizer._learning_rate`, of the
    `inner_optimizer`)."""
    inner = inner_optimizer(optimizer)
    rate = private(inner, "_learning_rate")
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return rate(0)
    return inner.learning_rate


class BuildsBeforeTracing:
    """A mixin for TensorFlow's trainer, which without a strategy builds a
    model at the first trace of `train_step`: keras-tram's step reads the
    variables before any call, so this builds them first, as Keras does
    under a strategy (overrides `Trainer._maybe_symbolic_build`, calls
    `Trainer._symbolic_build`)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        build = private(super(), "_maybe_symbolic_build", kind="Trainer")
        build(iterator=iterator, data_batch=data_batch)
        if self.built:
            return
        if iterator is not None:
            # The epoch iterator yields `(step, batches)` on Keras 3.8 and
            # `(begin, end, batches)` from 3.9 on: the batches come last.
            for *_, batches in iterator:
                data_batch = next(batches)
                break
        if data_batch is not None:
            private(self, "_symbolic_build")(data_batch=data_batch)
