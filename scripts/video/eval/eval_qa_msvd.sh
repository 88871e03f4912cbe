#!/usr/bin/env bash
# Judge MSVD zero-shot QA predictions. Usage: eval_qa_msvd.sh TOKENS [METHOD] [CKPT]
# Layout and environment (API_BASE, JUDGE_MODEL, OPENAI_API_KEY, NUM_WORKERS, ...): see eval_qa_runner.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/eval_qa_runner.sh" MSVD "$@"
