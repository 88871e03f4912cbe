#!/usr/bin/env bash
# Shared runner behind scripts/v1_5/eval/<METHOD>/<bench>.sh: inference on every visible GPU, merge, score.
# Usage: bash scripts/v1_5/eval/run.sh METHOD BENCH [TOKENS] [METHOD_ARG] [-- extra entry-point flags]
# Environment: CKPT or MODEL_PATH, DATA_ROOT, CONV_MODE, BATCH_SIZE, CUDA_VISIBLE_DEVICES, PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHON="$PY"
exec "$PY" -m llava.eval.run_benchmark "$@"
