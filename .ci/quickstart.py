"""Runs the README's quickstart (the first ```python block under "## Use it")
on random data shaped as it expects, and checks where keras_tram came from."""

import pathlib
import re
import sys

import numpy as np

import keras_tram

readme = pathlib.Path(sys.argv[1]).read_text()
section = readme[readme.index("## Use it"):]
code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
rng = np.random.default_rng(0)
data = {
    "x_train": rng.normal(size=(64, 8, 8)).astype("float32"),
    "y_train": rng.integers(0, 10, size=64),
    "x_val": rng.normal(size=(16, 8, 8)).astype("float32"),
    "y_val": rng.integers(0, 10, size=16),
}
namespace = dict(data)
exec(compile(code, "README quickstart", "exec"), namespace)
history = namespace["history"].history
assert len(history["divergence"]) == 3 and np.all(np.isfinite(history["loss"])), history
assert "site-packages" in keras_tram.__file__, keras_tram.__file__
print(f"quickstart: ran from {keras_tram.__file__}")
