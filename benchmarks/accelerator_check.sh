#!/usr/bin/env bash
# Checks keras-tram on whatever accelerator this machine has, in at most
# 8 minutes: the closed-form tests and the full-size benchmark (plain, SAM,
# TRAM-θ_{t-1} on GPT-2 base; float32 and mixed_bfloat16) on JAX and torch,
# written to a small report. Without an accelerator it writes "no
# accelerator" and exits 0.
#
#   bash benchmarks/accelerator_check.sh [WHEELS] [REPORT]
#   bash benchmarks/accelerator_check.sh --fetch [WHEELS]   # beforehand, with network
#
# A machine with CUDA builds of torch and JAX but no Keras and no network
# takes Keras, keras-hub, pytest, hypothesis and their small pure-Python
# dependencies from WHEELS (default: wheels/), which `--fetch` fills with
# `pip download` (about 20 MB). TensorFlow's GPU build is too large to carry
# that way: TensorFlow is not checked here. ACCELERATOR_CHECK_ON_CPU=1 runs
# the whole check on the CPU, to try the script where there is no accelerator.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# What the check installs from WHEELS: none of it has a CUDA build.
PACKAGES=(keras keras-hub pytest hypothesis)
DEPENDENCIES=(absl-py rich namex h5py optree ml-dtypes packaging markdown-it-py mdurl
  pygments pluggy iniconfig attrs sortedcontainers regex)

if [ "${1:-}" = "--fetch" ]; then
  wheels=${2:-wheels}
  mkdir -p "$wheels"
  # FETCH_PYTHON=3.12 fetches the compiled ones for the other machine's Python.
  target=()
  [ -n "${FETCH_PYTHON:-}" ] && target=(--python-version "$FETCH_PYTHON"
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
  "$PYTHON" -m pip download --no-deps --only-binary=:all: -d "$wheels" "${target[@]}" \
    "${PACKAGES[@]}" "${DEPENDENCIES[@]}"
  du -sh "$wheels"
  exit $?
fi

wheels=${1:-wheels}
report=${2:-accelerator_report.md}
budget_end=$((SECONDS + 470))  # 8 minutes, less the set-up's margin

accelerator() {
  if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1
    return 0
  fi
  "$PYTHON" - <<'EOF' 2>/dev/null
import sys
try:
    import torch
    if torch.cuda.is_available():
        print(torch.cuda.get_device_name(0)); sys.exit(0)
except ImportError:
    pass
try:
    import jax
    device = jax.devices()[0]
    if device.platform != "cpu":
        print(device.device_kind); sys.exit(0)
except Exception:
    pass
sys.exit(1)
EOF
}

device=$(accelerator)
if [ -z "$device" ] && [ "${ACCELERATOR_CHECK_ON_CPU:-0}" != "1" ]; then
  echo "no accelerator" | tee "$report"
  exit 0
fi
device=${device:-"CPU (ACCELERATOR_CHECK_ON_CPU=1)"}

# Keras and keras-hub from the wheels, next to the machine's own torch and JAX.
if ! "$PYTHON" -c "import keras, keras_hub, pytest, hypothesis" 2> /dev/null; then
  if [ ! -d "$wheels" ]; then
    echo "keras is not installed and there is no wheel folder '$wheels'" | tee "$report"
    exit 1
  fi
  target=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$target" "$wheels"/*.whl || exit 1
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $((budget_end - SECONDS)); }
limit() {  # seconds for the next part: its share, never past the budget
  local share=$1 rest
  rest=$(left)
  [ "$rest" -lt "$share" ] && share=$rest
  [ "$share" -lt 1 ] && share=1
  echo "$share"
}

out=$(mktemp -d)
{
  echo "# Accelerator check"
  echo
  echo "Device: $device. $(date -u '+%Y-%m-%d %H:%M UTC'); keras-tram at $(git rev-parse --short HEAD 2> /dev/null || echo '?')."
  echo
} > "$report"

status=0
for backend in jax torch; do
  echo "## $backend" >> "$report"
  echo >> "$report"
  KERAS_BACKEND=$backend timeout "$(limit 60)" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/integration/test_closed_form.py -k "test_weights_match_closed_form" > "$out/$backend-tests.log" 2>&1
  code=$?
  [ $code -ne 0 ] && status=1
  echo "Closed-form tests (exit $code): $(tail -n 1 "$out/$backend-tests.log")" >> "$report"
  echo >> "$report"
  for policy in float32 mixed_bfloat16; do
    share=105
    [ "$policy" = mixed_bfloat16 ] && share=75
    KERAS_BACKEND=$backend timeout "$(limit $share)" "$PYTHON" benchmarks/full_size.py \
      --backend "$backend" --models gpt2 --methods plain,sam,tram-previous_step \
      --batch 8x128 --repeats 1 --steps 3 --dtype-policy "$policy" \
      --output "$out/$backend-$policy" > "$out/$backend-$policy.log" 2>&1
    code=$?
    echo "Full size, $policy (exit $code):" >> "$report"
    echo >> "$report"
    if [ -f "$out/$backend-$policy.md" ]; then
      sed -n '/^\*\*/,$p' "$out/$backend-$policy.md" >> "$report"
    else
      status=1
      echo '```' >> "$report"
      tail -n 5 "$out/$backend-$policy.log" >> "$report"
      echo '```' >> "$report"
      echo >> "$report"
    fi
  done
done
cat "$report"
exit $status
