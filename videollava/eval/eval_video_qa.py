"""Score open-ended video QA predictions with an LLM judge (Video-ChatGPT protocol).

Usage::

    python -m videollava.eval.eval_video_qa --pred-path PRED.jsonl --output-dir DIR \\
        --output-json OUT.json --api-base URL --judge-model MODEL \\
        [--judge-mode upstream|strict] [--judge-prompt PROMPT.json] \\
        [--api-key-env OPENAI_API_KEY] [--num-workers 8] [--max-retries 5]

Judge modes (details in :mod:`videollava.eval.judge`):

``--judge-mode upstream`` (default, and what ``scripts/video/eval/eval_qa_*.sh`` run)
    Parsing and averaging exactly as the Video-ChatGPT / Video-LLaVA script that produced the
    published numbers: a reply counts when ``ast.literal_eval`` accepts it; its score is
    ``int(score)`` (4.8 -> 4, '2' -> 2); its verdict is yes when ``'yes' in pred.lower()``, else no
    when ``'no' in pred.lower()``; ``average_score`` divides by every judged item (including those
    whose score or verdict could not be read). Unlike upstream, a reply that never parses stops being
    retried at ``--max-retries`` and is recorded as failed (upstream loops forever).
``--judge-mode strict``
    Only ``{'pred': 'yes'|'no', 'score': integer 0..5}`` is accepted (anything else is retried, then
    recorded as failed) and ``average_score`` is over the yes/no items.

``--judge-prompt FILE`` replaces the built-in prompt (a restatement of the Video-ChatGPT prompt, not
its exact text) with a template file, e.g. the exact prompt of the paper you compare with; format in
:mod:`videollava.eval.judge_prompt`. The prompt's SHA-256 and the judge mode are recorded in every
cache entry, in every result and in the summary; a cache made under another prompt or mode is refused.

Robustness: a ``Retry-After`` from the server is honoured (up to ``--max-retry-after`` seconds; a
longer one ends that item's retries); after ``--max-consecutive-failures`` failed requests in a row
the run stops (endpoint down) and a rerun resumes; a second judge on the same ``--output-dir`` exits
at once naming the first (lock file ``<output-dir>.lock``); the exit status is 1 when no item was
judged.

Any OpenAI-compatible ``/chat/completions`` endpoint works (``--api-base`` is the URL up to and
including ``/v1``). The key is read from the environment variable named by ``--api-key-env``
(never from the command line); a local endpoint that ignores keys still needs a non-empty value.

Prediction file (``merge.jsonl``, written by the inference step)
----------------------------------------------------------------
UTF-8 JSON lines, one object per question; blank lines are ignored. Fields:

``question_id`` or ``id`` (str | int, required)
    Unique within the file. Upstream writes ``id``; if both are present they must be equal.
``question`` (str, required; aliases ``Q``, ``prompt``)
    The raw question text.
``answer`` (str, required; aliases ``A``, ``gt_answer``)
    The ground-truth answer, joined by ``question_id`` from ``test_a*.json``. Numbers are turned
    into strings.
``pred`` (str, required unless ``error`` is given; aliases ``text``, ``prediction``)
    The model's answer (stripped). An empty string is a valid (wrong) prediction.
``metadata`` (object, optional)
    Method, token budget, per-sample trace, ... Kept in the prediction file only; never sent to the
    judge.
``error`` (str, optional)
    A line with ``error`` and no prediction records an input the inference step skipped (e.g. an
    unreadable video with ``--skip-bad-inputs``). It is not judged and is counted as
    ``skipped_inputs`` in the summary.

When a field and its alias are both present they must be equal. Anything else is an error naming
the line.

Outputs
-------
* ``--output-dir``: the per-item judge cache, one ``<id>.json`` per item (format in
  :mod:`videollava.eval.judge`). A rerun sends only items without a valid entry; items judged ``ok``
  are never sent again. Entries from another judge model / judge mode / prompt / temperature, or for
  different prediction text, stop the run unless ``--overwrite-stale`` is given.
* ``--output-json``: ``{"summary": ..., "judge": {judge_model, judge_mode, prompt_sha256,
  prompt_source, temperature, api_base}, "pred_path", "output_dir", "created", "run": {cache
  statistics}, "results": {id: {"judgement": "yes"|"no"|null, "score": int|null, "reply",
  "question", "answer", "prediction", "judge_mode", "prompt_sha256"}}, "failures": {id: {"error",
  "reply", "attempts"}}, "skipped": {id: error}}`` (``null`` verdicts and scores occur in upstream
  mode only). ``summary`` has ``accuracy = yes / (yes + no)``, ``average_score = score_sum /
  score_denominator`` (see the modes above), the counts ``judged``, ``yes``, ``no``, ``no_verdict``,
  ``unscored``, ``failed`` (judge never gave an accepted reply within the retry cap), ``missing`` and
  ``skipped_inputs``, the paper formats ``accuracy_pct`` / ``average_score_2dp``, and
  ``judge_model``, ``judge_mode`` and ``prompt_sha256``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llava.eval.filelock import FileLockedError, exclusive_lock
from videollava.eval.judge import (
    DEFAULT_JUDGE_MODE,
    JUDGE_MODES,
    EndpointDownError,
    JudgeCache,
    JudgeConfig,
    JudgeFatalError,
    QARecord,
    RetryPolicy,
    StaleCacheError,
    judge_predictions,
    make_openai_complete,
    summarize,
)
from videollava.eval.judge_prompt import PromptTemplateError, builtin_prompt, load_prompt_template

logger = logging.getLogger("videollava.eval.eval_video_qa")

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("question_id", "id"),
    "question": ("question", "Q", "prompt"),
    "answer": ("answer", "A", "gt_answer"),
    "pred": ("pred", "text", "prediction"),
}


class PredictionFileError(ValueError):
    """The prediction file is missing or malformed."""


def _pick(obj: dict, name: str, where: str, required: bool) -> Any:
    present = [(alias, obj[alias]) for alias in FIELD_ALIASES[name] if alias in obj]
    if not present:
        if required:
            raise PredictionFileError(f"{where}: missing field '{name}' (accepted: {FIELD_ALIASES[name]})")
        return None
    value = present[0][1]
    for alias, other in present[1:]:
        if other != value:
            raise PredictionFileError(
                f"{where}: fields '{present[0][0]}' and '{alias}' disagree ({value!r} vs {other!r})"
            )
    return value


def _text(value: Any, name: str, where: str, numbers_ok: bool = False) -> str:
    if isinstance(value, str):
        return value
    if numbers_ok and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise PredictionFileError(f"{where}: field '{name}' must be a string, found {type(value).__name__}")


def load_predictions(path: str | os.PathLike) -> tuple[list[QARecord], dict[str, str]]:
    """Read a prediction file; returns (records to judge, {id: error} for skipped inputs)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"prediction file not found: {path}")
    records: list[QARecord] = []
    skipped: dict[str, str] = {}
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PredictionFileError(f"{where}: not valid JSON ({e})") from e
            if not isinstance(obj, dict):
                raise PredictionFileError(f"{where}: expected a JSON object, found {type(obj).__name__}")
            item_id = _pick(obj, "id", where, required=True)
            if isinstance(item_id, bool) or not isinstance(item_id, str | int):
                raise PredictionFileError(
                    f"{where}: the id must be a string or an integer, found {item_id!r}"
                )
            key = str(item_id)
            if key in seen:
                raise PredictionFileError(f"{where}: id {item_id!r} already appears on line {seen[key]}")
            seen[key] = lineno
            pred = _pick(obj, "pred", where, required="error" not in obj)
            if pred is None:
                skipped[key] = str(obj["error"])
                continue
            records.append(
                QARecord(
                    id=item_id,
                    question=_text(_pick(obj, "question", where, True), "question", where),
                    answer=_text(_pick(obj, "answer", where, True), "answer", where, numbers_ok=True),
                    pred=_text(pred, "pred", where),
                )
            )
    return records, skipped


def build_output(
    records: list[QARecord],
    skipped: dict[str, str],
    entries: dict[str, dict],
    *,
    config: JudgeConfig,
    api_base: str,
    pred_path: str,
    output_dir: str,
    run_stats: dict[str, int],
) -> dict[str, Any]:
    summary = summarize(records, entries, config.judge_mode)
    summary["skipped_inputs"] = len(skipped)
    summary["judge_model"] = config.judge_model
    summary["prompt_sha256"] = config.prompt_sha256
    results: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    for record in records:
        key = str(record.id)
        entry = entries.get(key)
        if entry is None:
            continue
        if entry["status"] == "ok":
            results[key] = {
                "judgement": entry["judgement"]["pred"],
                "score": entry["judgement"]["score"],
                "reply": entry["reply"],
                "question": record.question,
                "answer": record.answer,
                "prediction": record.pred,
                "judge_mode": entry["judge_mode"],
                "prompt_sha256": entry["prompt_sha256"],
            }
        else:
            failures[key] = {"error": entry["error"], "reply": entry["reply"], "attempts": entry["attempts"]}
    return {
        "summary": summary,
        "judge": {
            "judge_model": config.judge_model,
            "judge_mode": config.judge_mode,
            "prompt_sha256": config.prompt_sha256,
            "prompt_source": config.prompt.source,
            "temperature": config.temperature,
            "api_base": api_base,
        },
        "pred_path": pred_path,
        "output_dir": output_dir,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": run_stats,
        "results": results,
        "failures": failures,
        "skipped": skipped,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m videollava.eval.eval_video_qa",
        description="Judge open-ended video QA predictions with an OpenAI-compatible chat model.",
    )
    p.add_argument("--pred-path", "--pred_path", required=True, help="merged prediction JSONL")
    p.add_argument("--output-dir", "--output_dir", required=True, help="per-item judge cache directory")
    p.add_argument("--output-json", "--output_json", required=True, help="combined results and summary")
    p.add_argument("--api-base", "--api_base", required=True, help="e.g. https://api.openai.com/v1")
    p.add_argument(
        "--judge-model",
        "--judge_model",
        required=True,
        help="judge model name; prefer a pinned snapshot (e.g. gpt-3.5-turbo-0125)",
    )
    p.add_argument(
        "--judge-mode",
        "--judge_mode",
        choices=JUDGE_MODES,
        default=DEFAULT_JUDGE_MODE,
        help="upstream (default): parse and average exactly as the Video-ChatGPT script behind the "
        "published numbers (literal_eval, int(score), 'yes' in pred, score averaged over every judged "
        "item); strict: only {'pred': 'yes'|'no', 'score': int 0..5}, averaged over the yes/no items",
    )
    p.add_argument(
        "--judge-prompt",
        "--judge_prompt",
        metavar="FILE",
        default=None,
        help='prompt template JSON {"system": ..., "user": ...} with the fields {question}, {answer}, '
        "{pred} (str.format syntax), e.g. the exact prompt of the paper you compare with; default: the "
        "built-in restatement of the Video-ChatGPT prompt",
    )
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable that holds the API key (default: OPENAI_API_KEY)",
    )
    p.add_argument("--num-workers", "--num_tasks", type=int, default=8, help="concurrent requests")
    p.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="retries per item after the first attempt (errors and malformed replies)",
    )
    p.add_argument(
        "--backoff-base", type=float, default=1.0, help="seconds before the first retry; doubles per retry"
    )
    p.add_argument("--backoff-max", type=float, default=60.0, help="cap on one backoff delay (seconds)")
    p.add_argument(
        "--max-retry-after",
        type=float,
        default=120.0,
        help="longest server Retry-After honoured (seconds); a longer one ends that item's retries",
    )
    p.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=20,
        help="stop the run after this many failed requests in a row (endpoint down; a rerun resumes); "
        "0: never stop",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (seconds)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="judge temperature; not sent by default (the upstream protocol uses the API default)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="max reply tokens; not sent by default")
    p.add_argument(
        "--keep-failed", action="store_true", help="do not retry items whose cached entry is a failure"
    )
    p.add_argument(
        "--overwrite-stale",
        action="store_true",
        help="re-judge cache entries made under another judge config or for other predictions",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.num_workers < 1:
        p.error("--num-workers must be >= 1")
    if args.max_retries < 0:
        p.error("--max-retries must be >= 0")
    if args.backoff_base < 0 or args.backoff_max < 0 or args.max_retry_after < 0:
        p.error("backoff and Retry-After times must be >= 0")
    if args.max_consecutive_failures < 0:
        p.error("--max-consecutive-failures must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    api_key = os.environ.get(args.api_key_env, "").strip()
    if not api_key:
        print(
            f"error: no API key: environment variable {args.api_key_env} is not set or empty. Set it "
            f"(or name another variable with --api-key-env). A local endpoint that ignores keys still "
            f"needs a non-empty value.",
            file=sys.stderr,
        )
        return 2

    try:
        records, skipped = load_predictions(args.pred_path)
    except PredictionFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if skipped:
        logger.warning("%d input(s) were skipped by the inference step and are not judged", len(skipped))

    try:
        prompt = builtin_prompt() if args.judge_prompt is None else load_prompt_template(args.judge_prompt)
    except PromptTemplateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    config = JudgeConfig(
        judge_model=args.judge_model,
        judge_mode=args.judge_mode,
        prompt=prompt,
        temperature=args.temperature,
    )
    try:
        with exclusive_lock(str(Path(args.output_dir)), "judge cache directory"):
            return _judge_and_report(args, api_key, records, skipped, config)
    except FileLockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _judge_and_report(
    args: argparse.Namespace,
    api_key: str,
    records: list[QARecord],
    skipped: dict[str, str],
    config: JudgeConfig,
) -> int:
    """Judge what the cache lacks, write ``--output-json`` and print the summary; the exit status."""
    cache = JudgeCache(args.output_dir, config)
    policy = RetryPolicy(
        max_retries=args.max_retries,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        retry_after_max=args.max_retry_after,
    )
    try:
        complete = make_openai_complete(
            api_base=args.api_base,
            api_key=api_key,
            model=args.judge_model,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            timeout=args.timeout,
        )
        entries, stats = judge_predictions(
            records,
            cache,
            complete,
            num_workers=args.num_workers,
            policy=policy,
            retry_failed=not args.keep_failed,
            overwrite_stale=args.overwrite_stale,
            progress=not args.no_progress,
            max_consecutive_failures=args.max_consecutive_failures or None,
        )
    except EndpointDownError as e:
        print(f"error: {e} (cache: {args.output_dir})", file=sys.stderr)
        return 1
    except (JudgeFatalError, StaleCacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    output = build_output(
        records,
        skipped,
        entries,
        config=config,
        api_base=args.api_base,
        pred_path=str(args.pred_path),
        output_dir=str(args.output_dir),
        run_stats=vars(stats),
    )
    out_path = Path(args.output_json)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(output, f, ensure_ascii=False, indent=2)

    s = output["summary"]
    acc = "n/a" if s["accuracy_pct"] is None else f"{s['accuracy_pct']:.2f}"
    score = "n/a" if s["average_score_2dp"] is None else f"{s['average_score_2dp']:.2f}"
    print(
        f"judge: {config.judge_model} (mode {config.judge_mode}, prompt {config.prompt.source} "
        f"sha256 {config.prompt_sha256[:12]})"
    )
    print(
        f"items: {s['num_items']}  judged: {s['judged']}  yes: {s['yes']}  no: {s['no']}  "
        f"failed: {s['failed']}  skipped inputs: {s['skipped_inputs']}"
    )
    print(f"Accuracy: {acc}  Average score: {score}")
    print(f"results: {out_path}")
    if s["judged"] == 0:
        if s["num_items"] == 0:
            why = f"the prediction file {args.pred_path} has no items to judge"
        else:
            why = (
                f"{s['failed']} of {s['num_items']} item(s) failed (no accepted reply within the retry "
                f"cap; see 'failures' in {out_path}) and {s['missing']} are missing; fix the endpoint "
                f"or the prompt and rerun (failed items are retried)"
            )
        print(f"error: nothing was judged: {why}", file=sys.stderr)
        return 1
    if s["failed"]:
        logger.warning(
            "%d item(s) have no accepted judgement within the retry cap; they are excluded "
            "from accuracy and score (see 'failures' in %s)",
            s["failed"],
            out_path,
        )
    if s["no_verdict"] or s["unscored"]:
        logger.warning(
            "%d judged item(s) have no yes/no verdict and %d no readable score; as upstream, they "
            "are in the score denominator and not in accuracy",
            s["no_verdict"],
            s["unscored"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
