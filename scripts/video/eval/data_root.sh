# Sourced by run_qa_runner.sh and eval_qa_runner.sh (from the repository root): the one folder both use.
# DATA_ROOT and EVAL_ROOT are two names of it (either may be set; both must agree), so the judge always reads
# what inference wrote. Default: playground/data/eval/GPT_Zero_Shot_QA.
if [[ -n "${DATA_ROOT:-}" && -n "${EVAL_ROOT:-}" && "$DATA_ROOT" != "$EVAL_ROOT" ]]; then
    echo "error: DATA_ROOT=$DATA_ROOT and EVAL_ROOT=$EVAL_ROOT differ; they name the same folder, set only one" >&2
    exit 2
fi
DATA_ROOT="${DATA_ROOT:-${EVAL_ROOT:-playground/data/eval/GPT_Zero_Shot_QA}}"
EVAL_ROOT="$DATA_ROOT"
