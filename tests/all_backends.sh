#!/usr/bin/env bash
# Runs the test suite once per Keras backend. The three runs go side by side:
# each is mostly one busy thread (tracing, small kernels), so on a 2-core
# machine this takes about half the time of running them one after another.
# Arguments go to every pytest run; BACKENDS="jax torch" picks backends.
set -u
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
backends=(${BACKENDS:-tensorflow jax torch})
pids=()
for backend in "${backends[@]}"; do
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider --durations=8 "$@" \
    > "$logs/$backend.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!backends[@]}"; do
  backend=${backends[$i]}
  if wait "${pids[$i]}"; then
    echo "== $backend: passed"
    sed -n '/slowest .* durations/,$p' "$logs/$backend.log"
  else
    status=1
    echo "== $backend: FAILED"
    cat "$logs/$backend.log"
  fi
done
rm -rf "$logs"
exit $status
