#!/usr/bin/env bash
# Video-LLaVA zero-shot QA inference on MSVD. Usage: run_qa_msvd.sh TOKENS [METHOD] [CKPT]
# TOKENS: per-frame --visual-token-num. Chunking over CUDA_VISIBLE_DEVICES, layout and environment
# (CKPT, MODEL_PATH, DATA_ROOT, SUBSET, EXTRA_ARGS, ...): see run_qa_runner.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/run_qa_runner.sh" MSVD "$@"
