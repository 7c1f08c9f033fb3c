"""A penalty composes with any geometry: ASAM on the TRPO loss, no new code."""

import numpy as np

import keras_tram

import reference
from support import assert_weights
from support import fit_full_batch
from support import make_data
from support import make_mlp


def test_asam_with_a_penalty_composes_without_new_code():
    model, initial = make_mlp()
    x, y, _ = make_data()
    wrapped = keras_tram.SharpnessAware(
        model,
        geometry=keras_tram.geometry.Adaptive(0.0),
        radius=keras_tram.radius.Constant(0.5),
        penalty=keras_tram.penalty.Penalty(keras_tram.references.PreviousWeights(), 2.0),
    )
    history = fit_full_batch(wrapped, x, y, steps=2, learning_rate=0.5)
    assert sorted(history) == [
        "divergence", "grad_norm", "loss", "penalty", "radius", "skipped_steps"
    ]
    # Closed form: ASAM on L + 2·KL(θ_{t-1} ‖ θ), full batch.
    weights = [np.array(w, np.float64) for w in initial]
    previous = weights
    for _ in range(2):
        ref = reference.mlp_logits(previous, x)

        def grads_at(w, ref=ref):
            task = reference.mlp_loss_and_grads(w, x, y)[1]
            return [g + 2.0 * p for g, p in zip(task, reference.kl_grads(w, x, ref))]

        g = grads_at(weights)
        eps = reference.asam_epsilon(g, weights, 0.5, 0.0)
        descent = grads_at([w + e for w, e in zip(weights, eps)])
        previous, weights = weights, [w - 0.5 * d for w, d in zip(weights, descent)]
    assert_weights(model, weights)
