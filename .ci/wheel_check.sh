#!/usr/bin/env bash
# The package as a user installs it: the sdist and wheel built from this
# checkout, the wheel (not an editable install) with its `demo` extra (JAX and
# the demo's offline data) in a fresh virtualenv, then the README's
# quickstart, `python -m keras_tram --help` (which must not import Keras),
# `keras-tram demo --help` and `keras-tram demo --quick` with an empty cache,
# run from outside the checkout so that nothing is imported from it. The
# wheel installs one top-level name, `keras_tram`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m build --sdist --wheel --outdir "$work/dist" "$root" > "$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$(ls "$work"/dist/*.whl)[demo]"
cd "$work"
KERAS_BACKEND=jax "$work/venv/bin/python" "$root/.ci/quickstart.py" "$root/README.md"
"$work/venv/bin/keras-tram" demo --help > /dev/null
"$work/venv/bin/python" -c '
import runpy, sys
sys.argv = ["keras_tram", "demo", "--help"]
try:
    runpy.run_module("keras_tram", run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
assert "keras" not in sys.modules, "python -m keras_tram --help imported Keras"
' > /dev/null
top_level=$("$work/venv/bin/python" -c '
import importlib.metadata as m
print(" ".join(m.distribution("keras-tram").read_text("top_level.txt").split()))')
[ "$top_level" = "keras_tram" ] || { echo "top_level.txt names: $top_level"; exit 1; }
tar -tzf "$work"/dist/*.tar.gz > "$work/sdist.txt"
grep -q "keras_tram/_step/algorithm.py" "$work/sdist.txt"
started=$(date +%s)
"$work/venv/bin/keras-tram" demo --quick --backend jax --output "$work/demo" --cache "$work/cache" \
  > "$work/demo.log" 2>&1 || { tail -n 40 "$work/demo.log"; exit 1; }
test -s "$work/demo/digits.json" && test -s "$work/demo/digits-forest.png"
echo "keras-tram demo --quick from the wheel: $(( $(date +%s) - started )) s"
echo "wheel check: passed ($(ls "$work"/dist | tr "\n" " "))"
