#!/usr/bin/env bash
# One-GPU check of the batched trainer (throughput, accuracy parity, bf16, K probe, host syncs).
# Finishes in under 8 minutes on one GPU (a 420 s section budget plus start-up); writes
# $OUT/gpu_check.json when OUT is set. On a CPU: benchmarks/gpu_check.sh --quick (about a minute).
# Usage: benchmarks/gpu_check.sh [--quick] [--device cuda|cpu] [--budget SECONDS] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
# the hard stop leaves a margin over the budget for start-up and the last section
exec timeout --signal=TERM --kill-after=10 470 "$PY" benchmarks/gpu_check.py "$@"
