"""Every ```python example in the public docstrings runs."""

import pathlib
import re

import pytest

import keras_tram

PUBLIC = [getattr(keras_tram, name) for name in keras_tram.__all__]
PUBLIC += [
    keras_tram.geometry.Adaptive, keras_tram.geometry.Fisher,
    keras_tram.radius.TrustRegion, keras_tram.penalty.Penalty,
    keras_tram.references.NoisedInputs, keras_tram.schedule.FollowLearningRate,
    keras_tram.analysis.epsilon_sharpness, keras_tram.analysis.StepStatistics,
]
EXAMPLES = [
    (obj.__name__, block)
    for obj in PUBLIC
    for block in re.findall(r"```python\n(.*?)```", obj.__doc__ or "", re.S)
]


def test_there_are_examples():
    named = {"SAM", "ASAM", "FSAM", "GSAM", "FollowLearningRate", "TRAM", "TRAMFisher", "TRPO",
             "R3F", "MESA", "SharpnessAware", "epsilon_sharpness", "StepStatistics"}
    assert {name for name, _ in EXAMPLES} >= named


@pytest.mark.parametrize("name, code", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_docstring_example_runs(name, code):
    import textwrap

    exec(compile(textwrap.dedent(code), f"<{name} docstring>", "exec"), {})


ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGE_EXAMPLES = [
    (f"{page.relative_to(ROOT)}[{i}]", code)
    for page in PAGES
    for i, code in enumerate(
        re.findall(r"<!-- runs as a test -->\n```python\n(.*?)```", page.read_text(), re.S)
    )
]


def test_the_docs_have_runnable_examples():
    assert {name.split("[")[0] for name, _ in PAGE_EXAMPLES} >= {"docs/options.md"}


@pytest.mark.parametrize("name, code", PAGE_EXAMPLES, ids=[name for name, _ in PAGE_EXAMPLES])
def test_page_example_runs(name, code):
    exec(compile(code, f"<{name}>", "exec"), {})
