"""The package's layout: module sizes, private Keras API in one module, and
imports that run one way (wrapper → trainer → step → pieces) with no cycle."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_tram"
MODULES = sorted(PACKAGE.rglob("*.py"))

PRIVATE_KERAS = (
    "keras.src", "_flatten_layers", "_seed_generators", "_losses_override",
    "_compute_loss", "_iterations", "_maybe_symbolic_build", "_symbolic_build",
    "_initial_seed", "_trainable_variables", "_non_trainable_variables", "_loss_tracker",
    "_learning_rate",
)

# Lower layers never import higher ones.
LAYERS = [
    ["keras_tram.wrapper"],
    ["keras_tram._trainer"],
    ["keras_tram._step"],
    ["keras_tram.geometry", "keras_tram.radius", "keras_tram.penalty",
     "keras_tram.trust_region", "keras_tram.reduction", "keras_tram.descent",
     "keras_tram.selection", "keras_tram.schedule", "keras_tram.reuse",
     "keras_tram._perturbed", "keras_tram._logits_kl"],
]


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


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_private_keras_api_only_in_compat(path):
    if path.name == "_compat.py":
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


def test_compat_names_the_keras_version_it_was_checked_on():
    from keras_tram import _compat

    assert f"Checked on Keras {_compat.CHECKED_ON}" in (PACKAGE / "_compat.py").read_text()


def test_imports_run_one_way():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = [
        (module, imported)
        for module, imports in GRAPH.items() if module in rank
        for imported in imports if imported in rank and rank[imported] < rank[module]
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


def test_the_cli_is_above_the_package():
    """`keras-tram demo` imports the package; nothing in the package imports it."""
    importers = [p.name for p in MODULES if "keras_tram_cli" in p.read_text()]
    assert importers == []
    assert "keras_tram_cli" not in GRAPH and "keras_tram.demo" in GRAPH
