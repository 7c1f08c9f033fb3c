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
# `BACKEND=tensorflow bash .ci/floor.sh` runs the same on TensorFlow's floor
# (.ci/floor-tensorflow.txt, keras-hub's included) with the keras-hub tests.
set -euo pipefail
backend=${BACKEND:-jax}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
requirements=$root/.ci/floor.txt
extra=()
if [[ $backend == tensorflow ]]; then
  requirements=$root/.ci/floor-tensorflow.txt
  # The saved-file fixtures of this floor are JAX's; keras-hub is there.
  extra=(tests/experiments/test_hub.py tests/step/test_perturbation.py)
fi
"$work/venv/bin/python" -m pip install -q -r "$requirements"
"$work/venv/bin/python" -m pip install -q --no-deps "$root"
"$work/venv/bin/python" -m pip list 2>/dev/null \
  | grep -E '^(keras|keras-hub|jax|jaxlib|tensorflow|numpy|keras-tram) '
cd "$root"
core=(tests/integration/test_closed_form.py)
[[ $backend == jax ]] && core+=(tests/integration/test_saved_files.py)
KERAS_BACKEND=$backend "$work/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=3 \
  "${core[@]}" "${extra[@]}" \
  tests/pieces/test_reuse.py tests/step/test_frequency.py \
  tests/pieces/test_schedule.py \
  tests/glue \
  tests/methods/test_released.py \
  tests/pieces/test_radius.py tests/pieces/test_divergences.py tests/pieces/test_selection.py \
  "$@"
