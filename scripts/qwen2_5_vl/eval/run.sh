#!/usr/bin/env bash
# Shared runner behind scripts/qwen2_5_vl/eval/<METHOD>/<bench>.sh (Qwen2.5-VL): inference on every visible GPU,
# merge, score; the same runner as scripts/v1_5 with Qwen2.5-VL's default checkpoint and its own chat format.
# Usage: bash scripts/qwen2_5_vl/eval/run.sh METHOD BENCH [TOKENS] [METHOD_ARG] [-- extra entry-point flags]
#   TOKENS is the most merged (post-2x2-merger) tokens an image keeps; an image with fewer keeps them all.
#   Pixel range: -- --max-pixels N --min-pixels N (default: the checkpoint's preprocessor_config.json).
# Environment: CKPT (default Qwen2.5-VL-7B-Instruct) or MODEL_PATH, DATA_ROOT, BATCH_SIZE, CUDA_VISIBLE_DEVICES,
# PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
export CKPT="${CKPT:-Qwen2.5-VL-7B-Instruct}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHON="$PY"
exec "$PY" -m llava.eval.run_benchmark "$@"
