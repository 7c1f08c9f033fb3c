"""Every ```python example in the public docstrings runs."""

import re

import pytest

import keras_tram

PUBLIC = [getattr(keras_tram, name) for name in keras_tram.__all__]
PUBLIC += [
    keras_tram.geometry.Adaptive, keras_tram.geometry.Fisher,
    keras_tram.radius.TrustRegion, keras_tram.penalty.Penalty,
    keras_tram.trust_region.NoisedInputs,
    keras_tram.analysis.epsilon_sharpness, keras_tram.analysis.StepStatistics,
]
EXAMPLES = [
    (obj.__name__, block)
    for obj in PUBLIC
    for block in re.findall(r"```python\n(.*?)```", obj.__doc__ or "", re.S)
]


def test_there_are_examples():
    named = {"SAM", "ASAM", "FSAM", "TRAM", "TRPO", "R3F", "MESA", "SharpnessAware",
             "epsilon_sharpness", "StepStatistics"}
    assert {name for name, _ in EXAMPLES} >= named


@pytest.mark.parametrize("name, code", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_docstring_example_runs(name, code):
    import textwrap

    exec(compile(textwrap.dedent(code), f"<{name} docstring>", "exec"), {})
