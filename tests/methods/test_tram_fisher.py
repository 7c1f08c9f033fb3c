"""TRAMFisher: FSAM's perturbation shaped by a gradient on noised inputs, a
method of its own; `TRAM(variant="fisher")` (0.1) still makes one."""

import keras
import pytest
from support import assert_weights
from support import cross_entropy
from support import make_data
from support import make_mlp

import keras_tram


def _fit(wrapped):
    x, y, _ = make_data()
    wrapped.compile(optimizer=keras.optimizers.SGD(0.2), loss=cross_entropy())
    return wrapped.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history


def test_the_old_spelling_makes_the_same_method_with_a_warning():
    old_model, _ = make_mlp()
    keras.utils.set_random_seed(5)  # the same noise seed for both
    with pytest.warns(DeprecationWarning, match="TRAMFisher"):
        old = keras_tram.TRAM(old_model, variant="fisher", noise_stddev=0.3, rho=0.2, eta=0.5)
    assert type(old) is keras_tram.TRAMFisher and not isinstance(old, keras_tram.TRAM)
    assert (old.rho, old.eta, old.ascent_noise.stddev) == (0.2, 0.5, 0.3)
    old_history = _fit(old)

    new_model, _ = make_mlp()
    keras.utils.set_random_seed(5)
    new = keras_tram.TRAMFisher(new_model, rho=0.2, eta=0.5, noise_stddev=0.3)
    new_history = _fit(new)
    assert_weights(new_model, old_model.get_weights(), atol=0)
    assert new_history == old_history
    names = ("name", "model")  # the layers' own names differ: they are numbered
    assert ({k: v for k, v in new.get_config().items() if k not in names}
            == {k: v for k, v in old.get_config().items() if k not in names})


def test_wrap_makes_it_without_a_warning():
    import warnings

    model, _ = make_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        wrapped = keras_tram.wrap(model, "tram-fisher", rho=0.3)
    assert type(wrapped) is keras_tram.TRAMFisher and wrapped.rho == 0.3
    assert wrapped.variant == "fisher"


def test_config_round_trip_and_keras_file(tmp_path):
    model, _ = make_mlp()
    wrapped = keras_tram.TRAMFisher(model, rho=0.15, eta=0.2, noise_stddev=0.05)
    config = wrapped.get_config()
    assert {k: config[k] for k in ("rho", "eta", "noise_stddev", "noise_layer")} == {
        "rho": 0.15, "eta": 0.2, "noise_stddev": 0.05, "noise_layer": None,
    }
    again = keras_tram.TRAMFisher.from_config(config)
    assert again.get_config() == config
    _fit(wrapped)
    path = str(tmp_path / "fisher.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is keras_tram.TRAMFisher
    assert_weights(loaded.model, model.get_weights(), atol=0)


@pytest.mark.parametrize("arguments, argument", [
    (dict(rho=-1.0), "rho"), (dict(eta=-0.1), "eta"), (dict(noise_stddev=-1.0), "noise_stddev"),
    (dict(noise_layer=3), "noise_layer"),
])
def test_bad_arguments_name_the_argument(arguments, argument):
    with pytest.raises((TypeError, ValueError), match=f"`{argument}`"):
        keras_tram.TRAMFisher(make_mlp()[0], **arguments)


@pytest.mark.parametrize("arguments, message", [
    (dict(divergence="reverse_kl"), "divergence"), (dict(radius_scale=2.0), "radius_scale"),
    (dict(max_radius=1.0), "max_radius"), (dict(divergence_batch_fraction=0.5), "divergence"),
    (dict(formulation="released"), "formulation"),
])
def test_the_old_spelling_rejects_what_shapes_a_trust_region(arguments, message):
    with pytest.raises(ValueError, match=message):
        keras_tram.TRAM(make_mlp()[0], variant="fisher", **arguments)
