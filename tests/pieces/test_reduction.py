"""Reductions: the released code's `d` (a mean over every element) against its
closed form."""

import numpy as np
import pytest

import keras_tram

import reference


@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "symmetric_kl"])
@pytest.mark.parametrize("shape", [(3, 7), (3, 5, 7)], ids=["classifier", "sequence"])
def test_released_divergence_closed_form(kind, shape):
    """The element mean over batch × (time ×) classes, divided by the batch
    again, times `logit_scale`; a padding mask does not enter it."""
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(2, *shape))
    mask = (rng.uniform(size=shape[:-1]) > 0.3).astype("float32")
    forward = lambda a, b: reference.released_kl(a, b, logit_scale=3.0)  # noqa: E731
    expected = {
        "kl": forward(p, q), "reverse_kl": forward(q, p),
        "symmetric_kl": forward(p, q) + forward(q, p),
    }[kind]
    released = keras_tram.reduction.ElementMean(logit_scale=3.0)
    for sample_weight in (None, mask):
        actual = keras_tram.divergences.divergence(
            p.astype("float32"), q.astype("float32"), kind, sample_weight, reduction=released
        )
        np.testing.assert_allclose(float(actual), expected, rtol=1e-5)
    paper = keras_tram.divergences.divergence(p.astype("float32"), q.astype("float32"), kind)
    assert not np.isclose(float(paper), expected, rtol=1e-2)
