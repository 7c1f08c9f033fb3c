"""`Reuse`: its variables, configuration and arguments."""

import json

import pytest

import keras_tram

from support import make_mlp


def test_the_direction_is_one_float32_copy_of_the_trainable_weights():
    model, _ = make_mlp()
    plain = keras_tram.SAM(make_mlp()[0])
    wrapped = keras_tram.SAM(model, perturbation_every=5)
    extra = len(wrapped.non_trainable_variables) - len(plain.non_trainable_variables)
    # g_v, one variable per trainable weight, and its norm.
    assert extra == len(model.trainable_variables) + 1 == len(wrapped.reuse.variables) + 1
    for copy, weight in zip(wrapped.reuse.variables, model.trainable_variables):
        assert tuple(copy.shape) == tuple(weight.shape) and copy.dtype == "float32"
    assert tuple(wrapped.reuse.norm.shape) == ()


def test_reuse_arguments_round_trip_through_the_config():
    wrapped = keras_tram.TRAM(make_mlp()[0], perturbation_every=4, reuse_strength=0.5)
    config = wrapped.get_config()
    assert (config["perturbation_every"], config["reuse_strength"]) == (4, 0.5)
    rebuilt = keras_tram.TRAM.from_config(json.loads(json.dumps(config)))
    assert (rebuilt.reuse.every, rebuilt.reuse.strength) == (4, 0.5)
    assert rebuilt.statistics_tracker.full_step_names == ("radius", "divergence")


def test_a_method_without_a_perturbation_takes_no_reuse():
    with pytest.raises(ValueError, match="`perturbation_every`"):
        keras_tram.MESA(make_mlp()[0], perturbation_every=3)
