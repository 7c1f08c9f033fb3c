#!/usr/bin/env bash
# The declared floor: a fresh virtualenv with Keras and JAX at the minimums
# pyproject.toml declares (.ci/floor.txt), the package built and installed
# from this checkout without its dependencies, and the numeric core on JAX:
# the closed forms, reuse, schedules, the trainer contract (mixed precision,
# loss scaling, resuming), the saved-file fixtures (those written on this
# floor), the released formulation and the radius, divergences, selections
# and Keras-range checks. keras-hub's floor is not installed here: its
# tokenizers bring TensorFlow (tensorflow-text), and none of these tests
# needs it (the one test of keras-hub's embeddings among them is left out).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -r "$root/.ci/floor.txt"
"$work/venv/bin/python" -m pip install -q --no-deps "$root"
"$work/venv/bin/python" -m pip list 2>/dev/null | grep -E '^(keras|jax|jaxlib|numpy|keras-tram) '
cd "$root"
KERAS_BACKEND=jax "$work/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=3 \
  tests/integration/test_closed_form.py \
  tests/integration/test_saved_files.py \
  tests/pieces/test_reuse.py tests/step/test_frequency.py \
  tests/pieces/test_schedule.py \
  tests/glue \
  tests/methods/test_released.py \
  tests/pieces/test_radius.py tests/pieces/test_divergences.py tests/pieces/test_selection.py \
  "$@"
