#!/usr/bin/env bash
# The GPU check of issue 18 in one command (bench/gpu_check.py says what it measures).
#   bash bench/gpu_check.sh            # on the GPU machine: installs bench/wheels/, then measures
#   bash bench/gpu_check.sh --dry-run  # anywhere: tiny models on CPU, nothing installed
# bench/wheels/ is filled here by bench/fetch_gpu_wheels.sh and travels in the device tool's
# `carry` (the GPU machine has no network). Figures go to stdout and, with $OUT set,
# $OUT/gpu_check.json; the full log to $OUT/gpu_check.log.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
args=("$@")
if [[ " $* " != *" --dry-run "* ]]; then
    wheels="$root/bench/wheels"
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "no wheels in $wheels: run bench/fetch_gpu_wheels.sh and carry bench/wheels" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site "$wheels"/*.whl
    export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
    if compgen -G "$wheels/trl-1.12/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/trl-1.12 "$wheels"/trl-1.12/*.whl
        args+=(--trl-1.12 /tmp/trl-1.12)
    fi
else
    # One torch thread on CPU: on a shared machine OpenMP teams spin-wait (bench/common.py).
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${OUT:-}" ]]; then
    python3 bench/gpu_check.py "${args[@]}" 2>&1 | tee "$OUT/gpu_check.log"
else
    python3 bench/gpu_check.py "${args[@]}"
fi
