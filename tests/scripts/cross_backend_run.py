"""Trains SAM and ASAM on fixed weights and data; prints the final weights as JSON.

Run as `KERAS_BACKEND=... python tests/scripts/cross_backend_run.py`; `test_cross_backend.py`
runs it on every backend and compares.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import keras_tram  # noqa: E402

from support import cross_entropy  # noqa: E402
from support import make_data  # noqa: E402
from support import make_mlp  # noqa: E402


def train():
    results = {}
    x, y, sample_weight = make_data(n=24)
    for name, wrap in [
        ("sam", lambda m: keras_tram.SAM(m, rho=0.1)),
        ("asam", lambda m: keras_tram.ASAM(m, rho=0.5, eta=0.01)),
    ]:
        model, _ = make_mlp(l2=0.01)
        wrapped = wrap(model)
        wrapped.compile(optimizer=keras.optimizers.AdamW(0.01), loss=cross_entropy())
        wrapped.fit(x, y, sample_weight=sample_weight, batch_size=8, epochs=3,
                    shuffle=False, verbose=0)
        results[name] = [w.tolist() for w in model.get_weights()]
    return results


if __name__ == "__main__":
    print("RESULT " + json.dumps(train()))
