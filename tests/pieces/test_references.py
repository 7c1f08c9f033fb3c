"""References: `d` is 0 where the reference is the model itself, measured
again once the weights move, and their pass sees the clean pass's masks."""

import keras
import pytest

import keras_tram

from support import fit_full_batch
from support import make_data


def _dropout_batchnorm_model():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dropout(0.5),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda m: keras_tram.TRAM(m, variant="previous_step"),
        lambda m: keras_tram.TRAM(m, variant="pretrained"),
        lambda m: keras_tram.TRPO(m),
        lambda m: keras_tram.MESA(m, decay=0.9),
    ],
    ids=["tram_previous_step", "tram_pretrained", "trpo", "mesa"],
)
def test_divergence_is_zero_for_identical_weights_with_dropout_and_batchnorm(build):
    x, y, _ = make_data()
    # With a zero learning rate the weights never move: every reference equals
    # the current weights. The first step's d is exactly 0 (the copy was just
    # taken); later steps measure it, and other dropout masks or BatchNorm
    # modes would make it of order 0.1 instead of a rounding error.
    history = fit_full_batch(build(_dropout_batchnorm_model()), x, y, learning_rate=0.0)
    assert history["divergence"][0] == 0.0
    assert max(history["divergence"]) < 1e-6


@pytest.mark.parametrize("variant", ["previous_step", "pretrained"])
def test_divergence_is_measured_again_once_the_weights_move(variant):
    x, y, _ = make_data()
    wrapped = keras_tram.TRAM(_dropout_batchnorm_model(), variant=variant)
    first = fit_full_batch(wrapped, x, y, steps=2, learning_rate=0.5)["divergence"]
    assert first[0] == 0.0 and first[1] > 1e-4
    # The reference is not the weights when the next `fit` starts either.
    again = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert again.history["divergence"][0] > 1e-4


def test_weights_changed_after_the_copy_is_taken_are_measured():
    x, y, _ = make_data()
    model = _dropout_batchnorm_model()
    wrapped = keras_tram.TRAM(model, variant="pretrained")
    unmoved = fit_full_batch(wrapped, x, y, steps=0)  # takes the copy, trains nothing
    assert unmoved == {}
    model.set_weights([w + 0.1 for w in model.get_weights()])
    history = wrapped.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert history.history["divergence"][0] > 1e-4


class _SameWeights(keras_tram.references.Reference):
    """The current weights through a separate forward pass, with no shortcut."""

    def predictions(self, step, weights):
        return step.forward(weights)


@pytest.mark.parametrize("learning_rate", [0.0, 0.5])
def test_reference_pass_sees_the_clean_pass_masks_and_batchnorm_mode(learning_rate):
    x, y, _ = make_data()
    wrapped = keras_tram.SharpnessAware(
        _dropout_batchnorm_model(),
        keras_tram.geometry.Euclidean(),
        keras_tram.radius.TrustRegion(_SameWeights()),
    )
    history = fit_full_batch(wrapped, x, y, learning_rate=learning_rate)
    # Other dropout masks, or BatchNorm in inference mode, give d of order 0.1;
    # what is left is the rounding of two separately compiled passes.
    assert max(history["divergence"]) < 1e-6
