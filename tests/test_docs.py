"""Every ```python example in the public docstrings runs."""

import pathlib
import re

import pytest

import keras_tram

PUBLIC = [getattr(keras_tram, name) for name in keras_tram.__all__]
PUBLIC += [
    keras_tram.geometry.Adaptive, keras_tram.geometry.Fisher,
    keras_tram.radius.TrustRegion, keras_tram.penalty.Penalty,
    keras_tram.trust_region.NoisedInputs, keras_tram.schedule.FollowLearningRate,
    keras_tram.analysis.epsilon_sharpness, keras_tram.analysis.StepStatistics,
]
EXAMPLES = [
    (obj.__name__, block)
    for obj in PUBLIC
    for block in re.findall(r"```python\n(.*?)```", obj.__doc__ or "", re.S)
]


def test_there_are_examples():
    named = {"SAM", "ASAM", "FSAM", "GSAM", "FollowLearningRate", "TRAM", "TRPO", "R3F", "MESA", "SharpnessAware",
             "epsilon_sharpness", "StepStatistics"}
    assert {name for name, _ in EXAMPLES} >= named


@pytest.mark.parametrize("name, code", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_docstring_example_runs(name, code):
    import textwrap

    exec(compile(textwrap.dedent(code), f"<{name} docstring>", "exec"), {})


README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
README_EXAMPLES = re.findall(r"<!-- runs as a test -->\n```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_runnable_examples():
    assert README_EXAMPLES


@pytest.mark.parametrize("index", range(len(README_EXAMPLES)))
def test_readme_example_runs(index):
    exec(compile(README_EXAMPLES[index], f"<README example {index}>", "exec"), {})
