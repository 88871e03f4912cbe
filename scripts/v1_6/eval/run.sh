#!/usr/bin/env bash
# Shared runner behind scripts/v1_6/eval/<METHOD>/<bench>.sh (LLaVA-NeXT / LLaVA-1.6): inference on every visible
# GPU, merge, score; the same runner as scripts/v1_5 with LLaVA-1.6's default checkpoint.
# Usage: bash scripts/v1_6/eval/run.sh METHOD BENCH [TOKENS] [METHOD_ARG] [-- extra entry-point flags]
#   TOKENS is the budget per sub-image (base image and each anyres crop keep TOKENS each: FasterVLM's convention).
#   FasterVLM's fixed 2880-token grid: -- --next-grid fixed-672. LLaVA-1.6-Mistral: CONV_MODE=mistral_instruct.
# Environment: CKPT (default llava-v1.6-vicuna-7b) or MODEL_PATH, DATA_ROOT, CONV_MODE, BATCH_SIZE,
# CUDA_VISIBLE_DEVICES, PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
export CKPT="${CKPT:-llava-v1.6-vicuna-7b}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHON="$PY"
exec "$PY" -m llava.eval.run_benchmark "$@"
