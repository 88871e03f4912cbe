#!/usr/bin/env bash
# Shared runner: zero-shot video QA inference with Video-LLaVA for one dataset, one chunk per visible GPU,
# chunks merged in order (FasterVLM's video branch, scripts/eval/run_qa_*.sh).
#
# Usage: run_qa_runner.sh <MSVD|MSRVTT|TGIF|Activitynet> TOKENS [METHOD] [CKPT]
#   (normally called through run_qa_{msvd,msrvtt,tgif,activitynet}.sh TOKENS [METHOD] [CKPT])
#
# TOKENS is passed as --visual-token-num. For pre-LLM methods (fastervlm, ...) it is the per-frame budget
# (8 frames: 64 -> 512 visual tokens, "75 %"; 192/128/64/26/13 are FasterVLM's 25/50/75/90/95 % settings);
# for in-LLM methods (fastv, pdrop, ...) the tokens per video kept inside the LLM (FasterVLM's FastV rows:
# 1536/1024/512/208/104). With METHOD=none it only names the output folder.
#
# Layout, relative to the repository root (DATA_ROOT may be absolute):
#   ${DATA_ROOT}/<Dataset>_Zero_Shot_QA/{videos,videos/all,mp4,all_test}/   the videos
#   ${DATA_ROOT}/<Dataset>_Zero_Shot_QA/test_{q,a}[_1k].json               questions / answers
#   ${DATA_ROOT}/<Dataset>_Zero_Shot_QA/answers/<CKPT>/<LABEL>/<TOKENS>/
#       <CHUNKS>_<IDX>.json   per-chunk predictions (resumable: a rerun skips answered questions)
#       merge.jsonl           all chunks in order (the input of eval_qa_<dataset>.sh)
#   LABEL is METHOD followed by every setting in EXTRA_ARGS that can change an answer (python -m
#   llava.eval.run_label), e.g. fastervlm, fastervlm_budget-mode-global, fastervlm_keep-cls_temperature-0.1;
#   judge it with eval_qa_<dataset>.sh TOKENS LABEL (the runner prints that command).
#
# Environment (defaults in brackets):
#   CUDA_VISIBLE_DEVICES [0]   one chunk per listed GPU, e.g. 0,1,2,3
#   CKPT        [Video-LLaVA-7B]        METHOD [fastervlm]   (positional arguments win)
#   MODEL_PATH  [checkpoints/${CKPT}]   original (LanguageBind/Video-LLaVA-7B) or -hf layout
#   DATA_ROOT   [playground/data/eval/GPT_Zero_Shot_QA]   EVAL_ROOT is the same variable (the judge's name for it)
#   SUBSET      [1k]      1k: test_{q,a}_1k.json (FasterVLM's first 1K); full: test_{q,a}.json
#   PYTHON      [.venv/bin/python if present, else python3]
#   EXTRA_ARGS  []        more options, e.g. "--budget-mode global", "--keep-cls", "--temperature 0.1",
#                         "--video-tower checkpoints/LanguageBind_Video_merge", "--skip-bad-inputs"
#
# Stopping: SIGTERM, SIGINT or SIGHUP stop every chunk process (the runner waits for them); if the runner is
# killed outright, its chunk processes end themselves (llava/eval/parent_watch.py). A rerun resumes.
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
    MSVD) VIDEO_SUBDIR="videos"; PREFIX="" ;;
    MSRVTT) VIDEO_SUBDIR="videos/all"; PREFIX="" ;;
    TGIF) VIDEO_SUBDIR="mp4"; PREFIX="" ;;
    Activitynet) VIDEO_SUBDIR="all_test"; PREFIX="v_" ;;
    *) echo "error: unknown dataset '$DATASET' (MSVD, MSRVTT, TGIF or Activitynet)" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."

MODEL_PATH="${MODEL_PATH:-checkpoints/${CKPT}}"
# shellcheck source=data_root.sh
source scripts/video/eval/data_root.sh
SUBSET="${SUBSET:-1k}"
case "$SUBSET" in
    1k) SUFFIX="_1k" ;;
    full) SUFFIX="" ;;
    *) echo "error: SUBSET must be 1k or full, got '$SUBSET'" >&2; exit 2 ;;
esac
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

ROOT="${DATA_ROOT}/${DATASET}_Zero_Shot_QA"
# shellcheck disable=SC2086  # EXTRA_ARGS is split on purpose
LABEL="$("$PYTHON" -m llava.eval.run_label "$METHOD" -- ${EXTRA_ARGS:-})"
OUTPUT_DIR="${ROOT}/answers/${CKPT}/${LABEL}/${TOKENS}"
METHOD_ARGS=()
if [[ "$METHOD" != "none" && "$METHOD" != "baseline" ]]; then
    METHOD_ARGS=(--method "$METHOD" --visual-token-num "$TOKENS")
fi

IFS=',' read -ra GPULIST <<< "${CUDA_VISIBLE_DEVICES:-0}"
CHUNKS=${#GPULIST[@]}
mkdir -p "$OUTPUT_DIR"

pids=()
stop_chunks() {  # forward a stop signal to the chunk processes and wait for them
    trap '' TERM INT HUP
    echo "stopped by SIG$1: ending the chunk processes; answers written so far are kept, rerun to resume" >&2
    if [[ ${#pids[@]} -gt 0 ]]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    exit "$2"
}
trap 'stop_chunks TERM 143' TERM
trap 'stop_chunks INT 130' INT
trap 'stop_chunks HUP 129' HUP

echo "answers: $OUTPUT_DIR"
for IDX in $(seq 0 $((CHUNKS - 1))); do
    # shellcheck disable=SC2086  # EXTRA_ARGS is split on purpose
    CUDA_VISIBLE_DEVICES="${GPULIST[$IDX]}" LLAVA_EVAL_PARENT_PID=$$ "$PYTHON" -m videollava.eval.run_inference_video_qa \
        --model-path "$MODEL_PATH" \
        --video-dir "${ROOT}/${VIDEO_SUBDIR}" \
        --video-prefix "$PREFIX" \
        --gt-file-question "${ROOT}/test_q${SUFFIX}.json" \
        --gt-file-answers "${ROOT}/test_a${SUFFIX}.json" \
        --output-dir "$OUTPUT_DIR" \
        --output-name "${CHUNKS}_${IDX}" \
        --num-chunks "$CHUNKS" \
        --chunk-idx "$IDX" \
        "${METHOD_ARGS[@]}" \
        ${EXTRA_ARGS:-} &
    pids+=($!)
done

failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
if [[ $failed -ne 0 ]]; then
    echo "error: at least one chunk failed; rerun the same command to resume (answers so far are kept)" >&2
    exit 1
fi

MERGED="${OUTPUT_DIR}/merge.jsonl"
CHUNK_FILES=()
for IDX in $(seq 0 $((CHUNKS - 1))); do
    CHUNK_FILES+=("${OUTPUT_DIR}/${CHUNKS}_${IDX}.json")
done
"$PYTHON" -m llava.eval.answers merge "$MERGED" "${CHUNK_FILES[@]}"
echo "judge with: bash scripts/video/eval/eval_qa_$(echo "$DATASET" | tr '[:upper:]' '[:lower:]').sh $TOKENS $LABEL $CKPT"
