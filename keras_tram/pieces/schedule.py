"""Radius schedules: how far a step perturbs, as a function of the update.

A scheduled argument (SAM's `rho`, TRAM's `radius_scale` and `max_radius`,
...) is one of:

- a finite number >= 0: the same value at every update;
- a `keras.optimizers.schedules.LearningRateSchedule`, evaluated at the
  optimizer's `iterations` (the index of the update the step belongs to);
- a `FollowLearningRate`: a value that follows the optimizer's learning rate
  (GSAM's radius).

A scheduled value below 0 is taken as 0.

    >>> import keras
    >>> from keras_tram import schedule
    >>> decay = keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=10, end_learning_rate=0.0)
    >>> round(float(schedule.value(decay, schedule.At(index=5))), 6)
    0.05
    >>> follow = schedule.FollowLearningRate(rho_max=0.1, rho_min=0.02, lr_max=1e-3, lr_min=0.0)
    >>> round(float(schedule.value(follow, schedule.At(learning_rate=5e-4))), 6)
    0.06
"""

import math
import numbers
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from keras_tram.pieces._component import _deserialize
from keras_tram.pieces._component import _is_serialized
from keras_tram.pieces._component import Configurable
from keras_tram.pieces._validation import check_non_negative
from keras_tram.pieces._validation import scalar


class At(NamedTuple):
    """Where a step stands in training: the update a scheduled value is taken
    at, and the step's place in it.

    `index` is the optimizer's `iterations`; `learning_rate` the learning rate
    the optimizer applies this update with; `initial_learning_rate` the one of
    update 0 (its schedule at 0, or the constant learning rate). Under
    gradient accumulation an update takes `micro_steps` steps, this one
    being `micro_step` (from 0), and the optimizer `applies` the update on
    the last (True, or a boolean tensor).
    """

    index: Any = 0
    learning_rate: Any = None
    initial_learning_rate: Any = None
    applies: Any = True
    micro_step: Any = 0
    micro_steps: int = 1


@keras.saving.register_keras_serializable(package="keras_tram")
class FollowLearningRate(Configurable):
    """A radius that follows the learning rate, as GSAM's does (Zhuang et al., 2022).

    `ρ_t = ρ_min + (ρ_max − ρ_min) · (lr_t − lr_min) / (lr_max − lr_min)`, with
    `lr_t` the optimizer's learning rate at update t: ρ_max at the peak of
    the learning rate, ρ_min at its end. Where `lr_max == lr_min`, `ρ_t = ρ_max`.

    Args:
        rho_max: the value at `lr_max`, a finite number >= 0.
        rho_min: the value at `lr_min`, a finite number in [0, rho_max].
        lr_max: the learning rate ρ_max goes with; None (the default) is the
            optimizer's learning rate at update 0, right for a schedule that
            starts at its peak (cosine or linear decay), not for one that warms
            up: pass the peak then.
        lr_min: the learning rate ρ_min goes with (default 0).

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    rho = keras_tram.schedule.FollowLearningRate(rho_max=0.05, rho_min=0.01)
    wrapped = keras_tram.SAM(model, rho=rho)
    lr = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=4)
    wrapped.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=2, verbose=0)
    # ρ_t = 0.01 + 0.04 · lr_t / 0.1 at each of the 4 updates; logged: their mean
    lr_t = [0.05 * (1 + np.cos(np.pi * t / 4)) for t in range(4)]
    expected = np.mean([0.01 + 0.04 * lr / 0.1 for lr in lr_t])
    assert abs(history.history["radius"][0] - expected) < 1e-6
    ```
    """

    def __init__(self, rho_max, rho_min=0.0, lr_max=None, lr_min=0.0):
        self.rho_max = check_non_negative("rho_max", rho_max)
        self.rho_min = check_non_negative("rho_min", rho_min)
        if self.rho_min > self.rho_max:
            raise ValueError(
                f"`rho_min` must be <= `rho_max`; received rho_min={rho_min!r}, "
                f"rho_max={rho_max!r}."
            )
        self.lr_max = None if lr_max is None else check_non_negative("lr_max", lr_max)
        self.lr_min = check_non_negative("lr_min", lr_min)
        if self.lr_max is not None and self.lr_min > self.lr_max:
            raise ValueError(
                f"`lr_min` must be <= `lr_max`; received lr_min={lr_min!r}, "
                f"lr_max={lr_max!r}."
            )

    def __call__(self, at):
        if at.learning_rate is None:
            raise ValueError(
                "FollowLearningRate needs the optimizer's learning rate: use it in a "
                "compiled model's `fit`."
            )
        lr = ops.cast(at.learning_rate, "float32")
        lr_max = at.initial_learning_rate if self.lr_max is None else self.lr_max
        span = ops.cast(lr_max, "float32") - self.lr_min
        nonzero = ops.not_equal(span, 0.0)
        fraction = ops.where(nonzero, (lr - self.lr_min) / ops.where(nonzero, span, 1.0), 1.0)
        return self.rho_min + (self.rho_max - self.rho_min) * fraction

    def get_config(self):
        return {
            "rho_max": self.rho_max, "rho_min": self.rho_min,
            "lr_max": self.lr_max, "lr_min": self.lr_min,
        }


def check(name, value):
    """`value` as a scheduled argument: a float, a `LearningRateSchedule` or a
    `FollowLearningRate` (a serialized one is deserialized); raises otherwise,
    naming the argument."""
    if _is_serialized(value):
        value = _deserialize(value)
    value = scalar(value)
    if isinstance(value, (keras.optimizers.schedules.LearningRateSchedule,
                          FollowLearningRate)):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a finite number >= 0, a "
            "`keras.optimizers.schedules.LearningRateSchedule` or a "
            f"`keras_tram.schedule.FollowLearningRate`; received {value!r} of type "
            f"{type(value).__name__}."
        )
    if not math.isfinite(value) or value < 0:
        return check_non_negative(name, value)
    return float(value)


def is_constant(value):
    return isinstance(value, float)


def follows_learning_rate(value):
    return isinstance(value, FollowLearningRate)


def value(value, at):
    """The value at the update `at` (an `At`), a float32 scalar >= 0."""
    if is_constant(value):
        return ops.convert_to_tensor(value, dtype="float32")
    if isinstance(value, FollowLearningRate):
        result = value(at)
    else:
        result = ops.cast(value(at.index), "float32")
    return ops.maximum(ops.cast(result, "float32"), 0.0)


def serialize(value):
    """`value` as it goes into a config: the number itself, else the
    schedule serialized."""
    if is_constant(value):
        return value
    return keras.saving.serialize_keras_object(value)
