"""The package as users meet it: `python -m keras_tram` and `keras-tram
--help` without Keras, a light `import keras_tram`, the names of 0.1 where
they were."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("keras_hub", "matplotlib", "sklearn", "gensim", "babel")


def run_python(code):
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arguments", [["--help"], ["demo", "--help"],
                                       ["demo", "--task", "nope"]])
def test_the_command_answers_without_importing_keras(arguments):
    result = run_python(f"""
        import json, runpy, sys
        sys.argv = ["keras_tram", *{arguments!r}]
        try:
            runpy.run_module("keras_tram", run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        print(json.dumps({{"code": code, "keras": "keras" in sys.modules}}))
    """)
    assert result == {"code": 2 if "nope" in arguments else 0, "keras": False}


def test_importing_the_package_adds_no_heavy_module_to_keras():
    added = run_python("""
        import json, sys
        import keras
        before = set(sys.modules)
        import keras_tram
        for name in keras_tram.__all__:
            getattr(keras_tram, name)
        print(json.dumps(sorted(set(sys.modules) - before)))
    """)
    assert [m for m in added if m.split(".")[0] in HEAVY] == []
    assert any(m.startswith("keras_tram.methods") for m in added)


@pytest.mark.parametrize("keras_first", [True, False])
def test_saved_classes_are_registered_whichever_is_imported_first(keras_first):
    """Keras finds `keras_tram>SAM` in a `.keras` file by its registered name:
    registered once Keras is imported, before or after the package."""
    order = "import keras, keras_tram" if keras_first else "import keras_tram, keras"
    registered = run_python(f"""
        import json
        {order}
        names = ["keras_tram>SAM", "keras_tram>TRAM", "keras_tram>TRAMFisher",
                 "keras_tram>Adaptive", "keras_tram>PreviousWeights", "keras_tram>WarmupDecay"]
        print(json.dumps([keras.saving.get_registered_object(n) is not None for n in names]))
    """)
    assert registered == [True] * 6


def test_moved_modules_import_from_their_old_path_with_a_warning():
    result = run_python("""
        import json, warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            from keras_tram.geometry import Adaptive
            from keras_tram.tram import TRAM
            from keras_tram.wrapper import SharpnessAware
            from keras_tram.trust_region import NoisedInputs, divergence
            from keras_tram.demo import catalog
            import keras_tram.recipes
        import keras_tram
        from keras_tram.pieces.geometry import Adaptive as new_adaptive
        from keras_tram.pieces.references import NoisedInputs as new_noise
        print(json.dumps({
            "same": [Adaptive is new_adaptive, NoisedInputs is new_noise,
                     TRAM is keras_tram.TRAM, SharpnessAware is keras_tram.SharpnessAware,
                     keras_tram.geometry is keras_tram.pieces.geometry],
            "warned": sorted({str(w.message).split("`")[1] for w in caught
                              if w.category is DeprecationWarning}),
            "where": sorted({w.filename for w in caught}),
        }))
    """)
    assert result["same"] == [True] * 5
    assert result["warned"] == [
        "keras_tram.demo", "keras_tram.geometry", "keras_tram.recipes", "keras_tram.tram",
        "keras_tram.trust_region", "keras_tram.wrapper",
    ]
    assert result["where"] == ["<string>"]  # the line that named the old path


def test_public_attributes_do_not_warn():
    import warnings

    import keras_tram

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in keras_tram.__all__:
            assert getattr(keras_tram, name) is not None
    assert set(keras_tram.__all__) <= set(dir(keras_tram))
    with pytest.raises(AttributeError, match="no_such_name"):
        keras_tram.no_such_name


def _declared_minimums():
    """`{distribution: version}` of every `name>=version` in pyproject.toml."""
    import re

    with open(os.path.join(ROOT, "pyproject.toml")) as file:
        text = file.read()
    return {name.lower(): version
            for name, version in re.findall(r'"([A-Za-z0-9_\-]+)(?:\[[^\]]*\])?>=([0-9.]+)"', text)}


def _pins(name):
    with open(os.path.join(ROOT, ".ci", name)) as file:
        return dict(line.split("==") for line in file.read().split()
                    if "==" in line and not line.startswith("#"))


def test_the_floor_jobs_install_the_declared_minimums():
    """`.ci/floor.txt` (CI's, JAX) and `.ci/floor-tensorflow.txt` pin Keras,
    JAX (jaxlib with it), TensorFlow and keras-hub at what pyproject.toml
    declares, and the Keras floor is the one the package checks at import."""
    from keras_tram._keras.versions import OLDEST
    from keras_tram._keras.versions import parse

    declared = {name: parse(version) for name, version in _declared_minimums().items()}
    jax, tensorflow = _pins("floor.txt"), _pins("floor-tensorflow.txt")
    for pins in (jax, tensorflow):
        assert parse(pins["keras"]) == declared["keras"] == parse(OLDEST)
        assert parse(pins["pytest"]) == declared["pytest"]
    assert parse(jax["jax"]) == parse(jax["jaxlib"]) == declared["jax"]
    assert parse(tensorflow["tensorflow"]) == declared["tensorflow"]
    assert parse(tensorflow["keras-hub"]) == declared["keras-hub"]
