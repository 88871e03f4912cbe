#!/usr/bin/env bash
# Shared runner: score one dataset's merged video QA predictions with the LLM judge.
#
# Usage: eval_qa_runner.sh <MSVD|MSRVTT|TGIF|Activitynet> TOKENS [METHOD] [CKPT]
#   (normally called through eval_qa_{msvd,msrvtt,tgif,activitynet}.sh TOKENS [METHOD] [CKPT])
#
# TOKENS is the token-budget directory name the inference step wrote (FasterVLM's video branch
# uses its per-frame --visual_token_num there, e.g. 64 = 512 visual tokens for 8 frames). METHOD is the
# answers label the inference step printed: the method plus its non-default settings (e.g.
# fastervlm_budget-mode-global; see run_qa_runner.sh).
#
# Layout, relative to the repository root (DATA_ROOT may be absolute):
#   ${DATA_ROOT}/<Dataset>_Zero_Shot_QA/answers/<CKPT>/<METHOD>/<TOKENS>/
#       merge.jsonl                          merged predictions (input; see videollava/eval/eval_video_qa.py)
#       judge/<JUDGE_MODEL>/results/<id>.json  per-item judge cache (a rerun only judges what is missing)
#       judge/<JUDGE_MODEL>/results.json       summary (accuracy, average score, counts) + per-item results
#
# Environment (defaults in brackets):
#   DATA_ROOT      [playground/data/eval/GPT_Zero_Shot_QA]   EVAL_ROOT is the same variable (both runners read
#                  either; set to different folders they are refused)
#   CKPT           [Video-LLaVA-7B]      METHOD [fastervlm]   (positional arguments win)
#   API_BASE       [https://api.openai.com/v1]   any OpenAI-compatible endpoint
#   JUDGE_MODEL    [gpt-3.5-turbo-0125]          pin a snapshot; papers used the drifting gpt-3.5-turbo alias
#   OPENAI_API_KEY (required; never pass keys on the command line)
#   NUM_WORKERS    [8]    concurrent requests
#   MAX_RETRIES    [5]    retries per item before it is recorded as failed
#   PYTHON         [.venv/bin/python if present, else python3]
#   EXTRA_ARGS     []     more options for the judge, e.g. "--temperature 0 --no-progress"
set -euo pipefail

if [[ $# -lt 2 || $# -gt 4 ]]; then
    echo "usage: $(basename "$0") <MSVD|MSRVTT|TGIF|Activitynet> TOKENS [METHOD] [CKPT]" >&2
    exit 2
fi
DATASET="$1"
TOKENS="$2"
METHOD="${3:-${METHOD:-fastervlm}}"
CKPT="${4:-${CKPT:-Video-LLaVA-7B}}"

case "$DATASET" in
    MSVD|MSRVTT|TGIF|Activitynet) ;;
    *) echo "error: unknown dataset '$DATASET' (MSVD, MSRVTT, TGIF or Activitynet)" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."

# shellcheck source=data_root.sh
source scripts/video/eval/data_root.sh
API_BASE="${API_BASE:-https://api.openai.com/v1}"
JUDGE_MODEL="${JUDGE_MODEL:-gpt-3.5-turbo-0125}"
NUM_WORKERS="${NUM_WORKERS:-8}"
MAX_RETRIES="${MAX_RETRIES:-5}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

ANSWERS_DIR="${DATA_ROOT}/${DATASET}_Zero_Shot_QA/answers/${CKPT}/${METHOD}/${TOKENS}"
PRED_PATH="${ANSWERS_DIR}/merge.jsonl"
JUDGE_DIR="${ANSWERS_DIR}/judge/${JUDGE_MODEL//[\/:]/_}"

if [[ ! -f "$PRED_PATH" ]]; then
    labels="$(cd "${DATA_ROOT}/${DATASET}_Zero_Shot_QA/answers/${CKPT}" 2>/dev/null \
              && ls -d -- */"${TOKENS}/merge.jsonl" 2>/dev/null | cut -d/ -f1 | paste -sd' ' -)" || true
    echo "error: no merged predictions at $PRED_PATH (run the inference step first${labels:+; labels with TOKENS $TOKENS there: $labels})" >&2
    exit 1
fi

# shellcheck disable=SC2086  # EXTRA_ARGS is split on purpose
exec "$PYTHON" -m videollava.eval.eval_video_qa \
    --pred-path "$PRED_PATH" \
    --output-dir "${JUDGE_DIR}/results" \
    --output-json "${JUDGE_DIR}/results.json" \
    --api-base "$API_BASE" \
    --judge-model "$JUDGE_MODEL" \
    --api-key-env OPENAI_API_KEY \
    --num-workers "$NUM_WORKERS" \
    --max-retries "$MAX_RETRIES" \
    --judge-mode upstream \
    ${EXTRA_ARGS:-}
