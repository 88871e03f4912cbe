"""GPT-assisted scoring of open-ended video QA (the Video-ChatGPT judge), with a per-item disk cache.

The command-line entry point and the prediction-file format are documented in
:mod:`videollava.eval.eval_video_qa`. This module holds the pieces:

* :func:`build_messages` - the judge prompt (``PROMPT_VERSION``), restated from the Video-ChatGPT
  zero-shot QA evaluation: the judge compares the predicted answer with the correct one for a
  meaningful match (synonyms and paraphrases count) and replies with only a Python dict string
  ``{'pred': 'yes'|'no', 'score': <int 0..5>}``.
* :func:`parse_judgement` / :func:`validate_judgement` - strict parsing of that reply.
* :class:`JudgeCache` - one JSON file per item in the output directory (format below).
* :func:`judge_predictions` - concurrent judging (thread pool) with retries, exponential backoff and
  a cap; only items without a valid cache entry are sent.
* :func:`summarize` - accuracy = yes / (yes + no), average score over judged items.

Cache entry ``<output_dir>/<id>.json`` (``<id>`` made filesystem-safe; the entry's ``id`` field is
authoritative)::

    {"cache_format": 1, "id": <question id as in the prediction file>,
     "judge_model": "...", "prompt_version": "...", "temperature": null | float,
     "qa": {"question": "...", "answer": "...", "pred": "..."},
     "status": "ok" | "failed",
     "judgement": {"pred": "yes"|"no", "score": int} | null,
     "reply": "<last raw reply text>" | null, "error": "<why it failed>" | null,
     "attempts": int, "time": "<UTC ISO 8601>"}

An entry is reused only when its judge model, prompt version, temperature and ``qa`` all equal the
current ones; any other entry for the same id is *stale*. Stale entries stop the run (use a fresh
output directory, or allow re-judging them) rather than being mixed into the results. Entries whose
id is not in the prediction file are *foreign*: they are ignored and counted. ``failed`` entries
are retried on the next run unless asked otherwise; ``ok`` entries are never re-sent.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
PROMPT_VERSION = "videochatgpt-zeroshot-qa/restated-v1"
MIN_SCORE, MAX_SCORE = 0, 5

SYSTEM_PROMPT = (
    "You are an intelligent evaluator of question-answer pairs produced by a generative model. "
    "Your job is to compare the predicted answer with the correct answer and decide whether they "
    "match in meaning.\n"
    "INSTRUCTIONS:\n"
    "- Focus on whether the predicted answer matches the correct answer in meaning.\n"
    "- Treat synonyms and paraphrases as valid matches.\n"
    "- Judge how correct the prediction is with respect to the correct answer."
)

USER_TEMPLATE = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Give your evaluation only as a yes/no judgement and a score, where the score is an INTEGER "
    "from 0 to 5 and 5 means the highest meaningful match. "
    "Reply with a Python dictionary string with the keys 'pred' and 'score': the value of 'pred' is "
    "the string 'yes' or 'no', and the value of 'score' is an INTEGER, not a string. "
    "DO NOT PROVIDE ANY OTHER TEXT OR EXPLANATION. Only give the Python dictionary string. "
    "For example, your reply should look like this: {{'pred': 'yes', 'score': 4}}."
)


def build_messages(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    """Chat messages for one item (system + user)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(question=question, answer=answer, pred=pred)},
    ]


# --------------------------------------------------------------------------------------------------
# Reply parsing


class MalformedReplyError(ValueError):
    """The judge's reply is not the expected dict."""


_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_judgement(reply: str | None) -> dict[str, Any]:
    """Parse ``{'pred': 'yes'|'no', 'score': int}`` strictly.

    Accepted: surrounding whitespace, one surrounding Markdown code fence, double or single quotes,
    ``pred`` in any letter case, and an integral float score (``4.0``). Everything else - extra text,
    extra keys, a non-integral or out-of-range score, a string score, another ``pred`` value - raises
    :class:`MalformedReplyError`.
    """
    if reply is None:
        raise MalformedReplyError("empty reply (no message content)")
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        raise MalformedReplyError("empty reply")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise MalformedReplyError(f"not a Python literal: {type(e).__name__}") from e
    return validate_judgement(value)


def validate_judgement(value: Any) -> dict[str, Any]:
    """Check a parsed reply and return it normalised (``pred`` lower case, ``score`` an int)."""
    if not isinstance(value, dict):
        raise MalformedReplyError(f"expected a dict, got {type(value).__name__}")
    if set(value) != {"pred", "score"}:
        raise MalformedReplyError(
            f"expected exactly the keys 'pred' and 'score', got {sorted(map(str, value))}"
        )
    pred, score = value["pred"], value["score"]
    if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
        raise MalformedReplyError(f"'pred' must be 'yes' or 'no', got {pred!r}")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise MalformedReplyError(f"'score' must be an integer, got {type(score).__name__} {score!r}")
    if isinstance(score, float):
        if not score.is_integer():
            raise MalformedReplyError(f"'score' must be an integer, got {score!r}")
        score = int(score)
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise MalformedReplyError(f"'score' must be in [{MIN_SCORE}, {MAX_SCORE}], got {score}")
    return {"pred": pred.strip().lower(), "score": score}


# --------------------------------------------------------------------------------------------------
# Prediction records


@dataclass(frozen=True)
class QARecord:
    """One item to judge."""

    id: str | int
    question: str
    answer: str
    pred: str

    def qa(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer, "pred": self.pred}


# --------------------------------------------------------------------------------------------------
# Cache


@dataclass(frozen=True)
class JudgeConfig:
    """What makes two judgements comparable; stored in every cache entry."""

    judge_model: str
    prompt_version: str = PROMPT_VERSION
    temperature: float | None = None


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


def cache_filename(item_id: str | int) -> str:
    """Filesystem-safe file name for an item id (ids with other characters get a hash suffix)."""
    text = str(item_id)
    if _SAFE_NAME.match(text) and not text.endswith(".tmp"):
        return f"{text}.json"
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100].lstrip(".") or "id"
    return f"{stem}__{digest}.json"


@dataclass
class CacheScan:
    """What :meth:`JudgeCache.scan` found for a set of records."""

    valid: dict[str, dict] = field(default_factory=dict)  # key -> entry (ok or failed, matching config)
    stale: dict[str, str] = field(default_factory=dict)  # key -> reason
    foreign: int = 0
    unreadable: list[str] = field(default_factory=list)


class JudgeCache:
    """One JSON file per judged item in ``directory`` (see the module docstring for the format)."""

    def __init__(self, directory: str | os.PathLike, config: JudgeConfig):
        self.directory = Path(directory)
        self.config = config

    def path_for(self, item_id: str | int) -> Path:
        return self.directory / cache_filename(item_id)

    def make_entry(
        self,
        record: QARecord,
        *,
        judgement: dict | None,
        reply: str | None,
        error: str | None,
        attempts: int,
    ) -> dict:
        return {
            "cache_format": CACHE_FORMAT,
            "id": record.id,
            "judge_model": self.config.judge_model,
            "prompt_version": self.config.prompt_version,
            "temperature": self.config.temperature,
            "qa": record.qa(),
            "status": "ok" if judgement is not None else "failed",
            "judgement": judgement,
            "reply": reply,
            "error": error,
            "attempts": attempts,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def write(self, entry: dict) -> None:
        """Atomic write (temporary file + rename), so an interrupted run leaves no half entries."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(entry["id"])
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def mismatch(self, entry: dict, record: QARecord) -> str | None:
        """Why ``entry`` cannot stand for ``record`` under the current config, or None."""
        if entry.get("cache_format") != CACHE_FORMAT:
            return f"cache format {entry.get('cache_format')!r} != {CACHE_FORMAT}"
        for key in ("judge_model", "prompt_version", "temperature"):
            if entry.get(key) != getattr(self.config, key):
                return f"{key} {entry.get(key)!r} != {getattr(self.config, key)!r}"
        if entry.get("qa") != record.qa():
            return "question/answer/prediction text differs from the prediction file"
        status = entry.get("status")
        if status == "ok":
            try:
                if validate_judgement(entry.get("judgement")) != entry.get("judgement"):
                    return "stored judgement is not normalised"
            except MalformedReplyError as e:
                return f"stored judgement is invalid ({e})"
        elif status != "failed":
            return f"unknown status {status!r}"
        return None

    def scan(self, records: Iterable[QARecord]) -> CacheScan:
        by_key = {str(r.id): r for r in records}
        result = CacheScan()
        if not self.directory.is_dir():
            return result
        for path in sorted(self.directory.glob("*.json")):
            try:
                with open(path, encoding="utf-8") as f:
                    entry = json.load(f)
                if not isinstance(entry, dict) or "id" not in entry:
                    raise ValueError("not a cache entry")
            except (OSError, ValueError, UnicodeDecodeError):
                result.unreadable.append(path.name)
                continue
            key = str(entry["id"])
            record = by_key.get(key)
            if record is None or path.name != cache_filename(record.id):
                result.foreign += 1
                continue
            reason = self.mismatch(entry, record)
            if reason is None:
                result.valid[key] = entry
            else:
                result.stale[key] = reason
        return result


# --------------------------------------------------------------------------------------------------
# Calling the judge


class JudgeFatalError(RuntimeError):
    """An error that would fail every item (bad key, unknown model, unreachable endpoint config)."""


class StaleCacheError(ValueError):
    """The cache directory holds entries made under another judge config or for other predictions."""


class _NoRetry(Exception):
    """An item-level error that retrying cannot fix (e.g. HTTP 400 for this input)."""


@dataclass
class RetryPolicy:
    max_retries: int = 5  # retries after the first attempt
    backoff_base: float = 1.0  # seconds before the first retry; doubles each time
    backoff_max: float = 60.0
    jitter: float = 0.1  # extra random fraction of the delay

    def delay(self, retry_index: int) -> float:
        d = min(self.backoff_max, self.backoff_base * (2**retry_index))
        return d * (1.0 + random.uniform(0.0, self.jitter))


# A completion function takes the chat messages and returns the reply text (may be None).
CompleteFn = Callable[[list[dict[str, str]]], "str | None"]


def make_openai_complete(
    *,
    api_base: str,
    api_key: str,
    model: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float = 60.0,
) -> CompleteFn:
    """A completion function over any OpenAI-compatible ``/chat/completions`` endpoint."""
    try:
        import openai
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise JudgeFatalError("the judge needs the 'openai' package: pip install -e '.[judge]'") from e

    client = openai.OpenAI(base_url=api_base, api_key=api_key, max_retries=0, timeout=timeout)
    extra: dict[str, Any] = {}
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens

    def complete(messages: list[dict[str, str]]) -> str | None:
        try:
            response = client.chat.completions.create(model=model, messages=messages, **extra)
        except openai.APIStatusError as e:
            status = e.status_code
            if status in (401, 403):
                raise JudgeFatalError(f"the judge endpoint refused the API key (HTTP {status}): {e}") from e
            if status == 404:
                raise JudgeFatalError(
                    f"HTTP 404 from the judge endpoint (unknown model {model!r} or wrong --api-base "
                    f"{api_base!r}): {e}"
                ) from e
            if status in (408, 409, 429) or status >= 500:
                raise  # transient: retried
            raise _NoRetry(f"HTTP {status}: {e}") from e
        if not response.choices:
            return None
        return response.choices[0].message.content

    return complete


def _judge_one(
    record: QARecord, complete: CompleteFn, policy: RetryPolicy, stop: threading.Event
) -> tuple[dict | None, str | None, str | None, int]:
    """Returns (judgement, last reply, error, attempts). Raises JudgeFatalError."""
    messages = build_messages(record.question, record.answer, record.pred)
    reply: str | None = None
    error: str | None = None
    attempts = 0
    for attempt in range(policy.max_retries + 1):
        if stop.is_set():
            return None, reply, error or "run aborted", attempts
        if attempt and stop.wait(policy.delay(attempt - 1)):
            return None, reply, error or "run aborted", attempts
        attempts += 1
        try:
            reply = complete(messages)
            return parse_judgement(reply), reply, None, attempts
        except JudgeFatalError:
            raise
        except MalformedReplyError as e:
            error = f"malformed reply: {e}"
        except _NoRetry as e:
            return None, reply, f"request rejected: {e}", attempts
        except Exception as e:  # connection errors, timeouts, 429, 5xx: retried
            reply = None
            error = f"request failed: {type(e).__name__}: {e}"
        logger.debug("item %s attempt %d: %s", record.id, attempts, error)
    return None, reply, error, attempts


@dataclass
class JudgeRunStats:
    to_judge: int = 0
    cached_ok: int = 0
    cached_failed_kept: int = 0
    rejudged_stale: int = 0
    foreign: int = 0
    unreadable: int = 0


def judge_predictions(
    records: list[QARecord],
    cache: JudgeCache,
    complete: CompleteFn,
    *,
    num_workers: int = 8,
    policy: RetryPolicy | None = None,
    retry_failed: bool = True,
    overwrite_stale: bool = False,
    progress: bool = True,
) -> tuple[dict[str, dict], JudgeRunStats]:
    """Judge every record not already judged in ``cache``; returns (entries by id string, stats).

    Raises :class:`JudgeFatalError` on an error that would fail every item, and
    :class:`StaleCacheError` when the cache holds stale entries and ``overwrite_stale`` is false.
    """
    from tqdm.auto import tqdm

    policy = policy or RetryPolicy()
    scan = cache.scan(records)
    stats = JudgeRunStats(foreign=scan.foreign, unreadable=len(scan.unreadable))
    if scan.unreadable:
        logger.warning(
            "%d unreadable cache file(s) ignored, e.g. %s", len(scan.unreadable), scan.unreadable[:3]
        )
    if scan.foreign:
        logger.warning(
            "%d cache entries in %s belong to no item of this prediction file; ignored",
            scan.foreign,
            cache.directory,
        )
    if scan.stale and not overwrite_stale:
        examples = "; ".join(f"{k}: {v}" for k, v in list(scan.stale.items())[:3])
        raise StaleCacheError(
            f"{len(scan.stale)} cache entries in {cache.directory} were made under another judge "
            f"configuration or for other predictions ({examples}). Use a fresh --output-dir, or pass "
            f"--overwrite-stale to re-judge them."
        )
    stats.rejudged_stale = len(scan.stale)

    entries: dict[str, dict] = {}
    todo: list[QARecord] = []
    for record in records:
        key = str(record.id)
        entry = scan.valid.get(key)
        if entry is not None and (entry["status"] == "ok" or not retry_failed):
            entries[key] = entry
            if entry["status"] == "ok":
                stats.cached_ok += 1
            else:
                stats.cached_failed_kept += 1
        else:
            todo.append(record)
    stats.to_judge = len(todo)
    if not todo:
        return entries, stats

    stop = threading.Event()
    bar = tqdm(total=len(todo), desc="judging", unit="item", disable=not progress)
    fatal: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = {pool.submit(_judge_one, r, complete, policy, stop): r for r in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.cancelled():
                        continue
                    record = futures[fut]
                    try:
                        judgement, reply, error, attempts = fut.result()
                    except JudgeFatalError as e:
                        fatal = fatal or e
                        stop.set()
                        continue
                    if stop.is_set() and judgement is None:
                        continue  # aborted, not a real failure: leave it missing for the next run
                    entry = cache.make_entry(
                        record, judgement=judgement, reply=reply, error=error, attempts=attempts
                    )
                    cache.write(entry)
                    entries[str(record.id)] = entry
                    bar.update(1)
                if fatal is not None:
                    for fut in pending:
                        fut.cancel()
        except BaseException:
            stop.set()
            for fut in pending:
                fut.cancel()
            raise
        finally:
            bar.close()
    if fatal is not None:
        raise fatal
    return entries, stats


# --------------------------------------------------------------------------------------------------
# Summary


def summarize(records: list[QARecord], entries: dict[str, dict]) -> dict[str, Any]:
    """Counts and metrics over ``records`` (the prediction file's items).

    ``accuracy = yes / (yes + no)``; ``average_score = sum(score) / (yes + no)``. Failed and missing
    items enter neither; they are counted separately. ``*_pct``/``*_2dp`` are the paper formats
    (accuracy x 100 and score, two decimals).
    """
    yes = no = failed = missing = 0
    score_sum = 0
    for record in records:
        entry = entries.get(str(record.id))
        if entry is None:
            missing += 1
        elif entry["status"] == "ok":
            judgement = entry["judgement"]
            score_sum += judgement["score"]
            if judgement["pred"] == "yes":
                yes += 1
            else:
                no += 1
        else:
            failed += 1
    judged = yes + no
    accuracy = yes / judged if judged else None
    average_score = score_sum / judged if judged else None
    return {
        "num_items": len(records),
        "judged": judged,
        "yes": yes,
        "no": no,
        "failed": failed,
        "missing": missing,
        "score_sum": score_sum,
        "accuracy": accuracy,
        "average_score": average_score,
        "accuracy_pct": None if accuracy is None else round(accuracy * 100, 2),
        "average_score_2dp": None if average_score is None else round(average_score, 2),
    }
