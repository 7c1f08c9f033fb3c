"""Random constructor arguments, valid and not: valid ones train without NaN,
invalid ones raise ValueError/TypeError naming the argument."""

import math

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_tram
from keras_tram.pieces.divergences import DIVERGENCES

from support import cross_entropy
from support import make_data
from support import make_mlp

NON_NEGATIVE = st.floats(0.0, 2.0)
BAD_NUMBER = st.one_of(
    st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
    st.text(max_size=3), st.just(True), st.just([0.1]),
)
NUMBER = (NON_NEGATIVE, BAD_NUMBER)
# A radius: a number, a Keras schedule, or one that follows the learning rate.
GOOD_SCHEDULED = st.one_of(
    NON_NEGATIVE,
    st.builds(lambda r, d: keras.optimizers.schedules.ExponentialDecay(r, 1, d),
              NON_NEGATIVE, st.floats(0.1, 1.0)),
    st.builds(lambda a, b, lr: keras_tram.schedule.FollowLearningRate(max(a, b), min(a, b), lr),
              NON_NEGATIVE, NON_NEGATIVE, st.one_of(st.none(), st.floats(0.05, 1.0))),
)
SCHEDULED = (GOOD_SCHEDULED, st.one_of(
    BAD_NUMBER, st.just("cosine"), st.just(lambda step: 0.1), st.just(keras.optimizers.SGD)))
UNIT = (st.floats(0.0, 1.0), st.one_of(BAD_NUMBER, st.floats(1.0, 10.0, exclude_min=True)))
OPTIONAL_NUMBER = (st.one_of(st.none(), NON_NEGATIVE), BAD_NUMBER)
DIVERGENCE = (st.sampled_from(DIVERGENCES), st.sampled_from(["js", "KL", "", "l2"]))
FRACTION = (st.floats(0.05, 1.0), st.one_of(
    st.floats(max_value=0.0), st.floats(1.0, 5.0, exclude_min=True), st.just(math.nan),
    st.text(max_size=2)))
TRUST_REGION = {"eta": NUMBER, "radius_scale": SCHEDULED,
                "max_radius": (st.one_of(st.none(), GOOD_SCHEDULED), SCHEDULED[1]),
                "divergence": DIVERGENCE, "divergence_batch_fraction": FRACTION}
# The released formulation takes no `eta`, and a `logit_scale`.
RELEASED = {**{k: v for k, v in TRUST_REGION.items() if k != "eta"}, "logit_scale": NUMBER}
# Every method takes these; a batch of 16 splits into at most 16 chunks.
SHARED = {
    "perturbation_scope": (st.sampled_from(["global", "per_replica"]),
                           st.sampled_from(["local", "", "GLOBAL", None])),
    "perturbation_chunks": (st.integers(1, 16),
                            st.one_of(st.integers(max_value=0), st.just(2.0), st.just(True))),
}

# Every perturbing method takes these too (LookSAM's reuse).
REUSE = {
    "perturbation_every": (st.integers(1, 4),
                           st.one_of(st.integers(max_value=0), st.just(2.0), st.just(True))),
    "reuse_strength": NUMBER,
    # Which weights are perturbed (the MLP has no normalization weights).
    "perturb": (
        st.one_of(st.sampled_from(["all", "no_bias_norm"]),
                  st.just(lambda v: v.name == "kernel"), st.just(["dense/bias"])),
        st.one_of(st.sampled_from(["none", "ALL", "norm_only", "", 3]),
                  st.just([1.0]), st.just(["no/such"]), st.just(lambda v: False)),
    ),
}
PLAIN_STEP = ("TRPO", "R3F", "MESA")

# Each method, its fixed arguments and what may be drawn for the others.
METHODS = {
    "SAM": (keras_tram.SAM, {}, {"rho": SCHEDULED}),
    "ASAM": (keras_tram.ASAM, {}, {"rho": SCHEDULED, "eta": NUMBER}),
    "FSAM": (keras_tram.FSAM, {}, {"rho": SCHEDULED, "eta": NUMBER}),
    "GSAM": (keras_tram.GSAM, {}, {"rho": SCHEDULED, "alpha": NUMBER}),
    "TRAM-previous_step": (keras_tram.TRAM, {"variant": "previous_step"}, TRUST_REGION),
    "TRAM-pretrained": (keras_tram.TRAM, {"variant": "pretrained"}, TRUST_REGION),
    "TRAM-input_noise": (keras_tram.TRAM, {"variant": "input_noise"},
                         {**TRUST_REGION, "noise_stddev": NUMBER}),
    "TRAM-fisher": (keras_tram.TRAM, {"variant": "fisher"},
                    {"rho": SCHEDULED, "eta": NUMBER, "noise_stddev": NUMBER}),
    "TRAM-released-previous_step": (
        keras_tram.TRAM, {"variant": "previous_step", "formulation": "released"}, RELEASED),
    "TRAM-released-input_noise": (
        keras_tram.TRAM, {"variant": "input_noise", "formulation": "released"},
        {**RELEASED, "noise_stddev": NUMBER}),
    "TRPO": (keras_tram.TRPO, {}, {"weight": NUMBER, "divergence": DIVERGENCE}),
    "R3F": (keras_tram.R3F, {}, {"noise_stddev": NUMBER, "weight": NUMBER,
                                 "divergence": DIVERGENCE}),
    "MESA": (keras_tram.MESA, {}, {"decay": UNIT, "weight": NUMBER,
                                   "divergence": DIVERGENCE}),
}


@st.composite
def configurations(draw):
    """`(method, constructor, arguments, names of the invalid ones)`."""
    method = draw(st.sampled_from(sorted(METHODS)))
    constructor, fixed, drawable = METHODS[method]
    arguments, invalid = dict(fixed), []
    shared = SHARED if method in PLAIN_STEP else {**SHARED, **REUSE}
    for name, (good, bad) in {**drawable, **shared}.items():
        choice = draw(st.sampled_from(["default", "valid", "valid", "invalid"]))
        if choice == "valid":
            arguments[name] = draw(good)
        elif choice == "invalid":
            arguments[name] = draw(bad)
            invalid.append(name)
    return method, constructor, arguments, invalid


@settings(max_examples=60, deadline=None, derandomize=True)
@given(configurations())
def test_random_configurations(configuration):
    method, constructor, arguments, invalid = configuration
    keras.backend.clear_session()
    model, _ = make_mlp()
    if invalid:
        with pytest.raises((ValueError, TypeError)) as error:
            constructor(model, **arguments)
        assert any(f"`{name}`" in str(error.value) for name in invalid), (
            method, arguments, str(error.value))
        return
    wrapped = constructor(model, **arguments)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss=cross_entropy(),
                    run_eagerly=True)
    x, y, _ = make_data()
    for _ in range(2):
        logs = wrapped.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(w).all() for w in model.get_weights()), (method, arguments)
    assert logs["skipped_steps"] == 0, (method, arguments, logs)
