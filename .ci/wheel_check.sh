#!/usr/bin/env bash
# The package as a user installs it: the sdist and wheel built from this
# checkout, the wheel (not an editable install) in a fresh virtualenv with one
# backend, then the README's quickstart and `keras-tram demo --help`, run from
# outside the checkout so that nothing is imported from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m build --sdist --wheel --outdir "$work/dist" "$root" > "$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$(ls "$work"/dist/*.whl)" "jax>=0.4.30"
cd "$work"
KERAS_BACKEND=jax "$work/venv/bin/python" "$root/.ci/quickstart.py" "$root/README.md"
"$work/venv/bin/keras-tram" demo --help > /dev/null
tar -tzf "$work"/dist/*.tar.gz > "$work/sdist.txt"
grep -q "keras_tram/_step.py" "$work/sdist.txt"
echo "wheel check: passed ($(ls "$work"/dist | tr "\n" " "))"
