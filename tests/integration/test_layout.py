"""The package's layout: the map in docs/development.md is the tree, private
Keras API sits in one module, and imports run one way down the layers
(experiments → analysis → methods → Keras glue → step → pieces → backend ops)
with no cycle."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "keras_tram"
MODULES = sorted(PACKAGE.rglob("*.py"))

MAP = ROOT / "docs" / "development.md"

PRIVATE_KERAS = (
    "keras.src", "_flatten_layers", "_seed_generators", "_losses_override",
    "_compute_loss", "_iterations", "_maybe_symbolic_build", "_symbolic_build",
    "_initial_seed", "_trainable_variables", "_non_trainable_variables", "_loss_tracker",
    "_learning_rate",
)

# Lower layers never import higher ones; a module's layer is the first whose
# prefix names it. Keras's private API (`_keras.compat`) is below everything.
LAYERS = [
    ["keras_tram.cli", "keras_tram.__main__"],
    ["keras_tram.experiments"],
    ["keras_tram.analysis"],
    ["keras_tram.methods"],
    ["keras_tram._keras.trainer", "keras_tram._keras.pipeline", "keras_tram._keras.step_metric"],
    ["keras_tram._step"],
    ["keras_tram.pieces"],
    ["keras_tram._ops"],
    ["keras_tram._keras.compat", "keras_tram._keras.versions"],
]


def layer_of(module):
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path):
    """The keras_tram modules `path` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module`, or of a name
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in KNOWN else node.module)
    return {name for name in names if name in KNOWN}


KNOWN = {module_name(p) for p in MODULES}
GRAPH = {module_name(p): imports_of(p) - {module_name(p)} for p in MODULES}


def mapped_modules():
    """The module files the layout in docs/development.md names, as paths
    relative to the package: folders end in `/`, nesting is indentation."""
    block = MAP.read_text().split("## Layout", 1)[1].split("```", 2)[1]
    folders, paths = [], set()
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            paths.add("/".join(folders[1:] + [name]))  # folders[0] is keras_tram
    return paths


def test_the_map_in_the_docs_is_the_tree():
    tree = {str(p.relative_to(PACKAGE)) for p in MODULES}
    mapped = mapped_modules()
    assert sorted(tree - mapped) == [] and sorted(mapped - tree) == []


def test_every_module_has_a_layer():
    unranked = [m for m in GRAPH if layer_of(m) is None]
    # The package, its shims, and `_keras/__init__.py` (a docstring).
    assert sorted(unranked) == ["keras_tram", "keras_tram._keras", "keras_tram._moved"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_private_keras_api_only_in_compat(path):
    if path.relative_to(PACKAGE).as_posix() == "_keras/compat.py":
        return
    text = path.read_text()
    # A name counts where it starts a word: `non_trainable_variables` is public.
    found = [name for name in PRIVATE_KERAS if re.search(r"(?<!\w)" + re.escape(name), text)]
    assert found == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_class_level_branch(path):
    """Backend choices are made once, at import, in `_trainer.py`: no class
    body holds an `if`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            assert not [n for n in node.body if isinstance(n, ast.If)], node.name


def test_compat_names_the_keras_versions_it_was_checked_on():
    from keras_tram._keras import compat

    oldest, newest = compat.CHECKED_ON
    text = (PACKAGE / "_keras" / "compat.py").read_text()
    assert f"Checked on Keras {oldest} (the floor, CI's floor job) to {newest}" in text
    # The floor pyproject.toml declares is the one checked.
    assert f'"keras>={oldest}"' in (ROOT / "pyproject.toml").read_text()


def test_imports_run_one_way():
    upward = [
        (module, imported)
        for module, imports in GRAPH.items() if layer_of(module) is not None
        for imported in imports
        if layer_of(imported) is not None and layer_of(imported) < layer_of(module)
    ]
    assert upward == []


def test_no_import_cycle():
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", " → ".join(path + [module])
        state[module] = "open"
        for imported in sorted(GRAPH.get(module, ())):
            # A package imports its own submodules to re-export them.
            if not imported.startswith(module + "."):
                visit(imported, path + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        visit(module, [])


def test_the_tests_mirror_the_package():
    """A folder of tests per layer, and a test file per public piece."""
    tests = ROOT / "tests"
    for folder in ("methods", "pieces", "step", "glue", "analysis", "experiments", "integration"):
        assert sorted((tests / folder).glob("test_*.py")), folder
    pieces = sorted(p.stem for p in (PACKAGE / "pieces").glob("*.py") if not p.stem.startswith("_"))
    missing = [name for name in pieces if not (tests / "pieces" / f"test_{name}.py").exists()]
    assert pieces and missing == []
    assert sorted(p.name for p in tests.glob("test_*.py")) == []  # every test in its layer


def test_one_top_level_name():
    """The wheel installs `keras_tram` alone: no module beside the package."""
    assert sorted(p.name for p in ROOT.glob("*.py")) == []
    assert "keras_tram.cli" in GRAPH and "keras_tram.experiments.demo" in GRAPH
