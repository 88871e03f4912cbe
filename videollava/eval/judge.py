"""GPT-assisted scoring of open-ended video QA (the Video-ChatGPT judge), with a per-item disk cache.

The command-line entry point and the prediction-file format are documented in
:mod:`videollava.eval.eval_video_qa`. This module holds the pieces:

* :func:`build_messages` - the judge prompt (:mod:`videollava.eval.judge_prompt`: the built-in
  restatement of the Video-ChatGPT zero-shot QA prompt, or a template file), identified by its SHA-256.
* Two ways to read a reply (the *judge mode*), chosen with :func:`judge_reply`:

  ``upstream`` (the default; what produced the published numbers)
      Exactly as the Video-ChatGPT / Video-LLaVA ``eval_video_qa.py``: a reply is accepted when
      ``ast.literal_eval`` of its content succeeds (anything else is retried; upstream retries
      forever, we stop at the retry cap and record the item as failed). The accepted value is then
      scored as upstream's aggregation does, see :func:`upstream_judgement`: ``int(value['score'])``
      (4.8 -> 4, '2' -> 2; a score that fails there scores nothing and gives no verdict),
      ``'yes' in value['pred'].lower()`` -> yes, else ``'no' in ...`` -> no, else no verdict.
  ``strict``
      :func:`parse_judgement`: only ``{'pred': 'yes'|'no', 'score': int 0..5}`` (with small
      allowances) is accepted; anything else is retried, then recorded as failed.

* :class:`JudgeCache` - one JSON file per item in the output directory (format below).
* :func:`judge_predictions` - concurrent judging (thread pool) with retries, exponential backoff
  (at least the server's ``Retry-After``) and a cap; it stops the run after a streak of failed
  requests (endpoint down). Only items without a valid cache entry are sent.
* :func:`summarize` - the counts and the two metrics under the run's judge mode.

Cache entry ``<output_dir>/<id>.json`` (``<id>`` made filesystem-safe; the entry's ``id`` field is
authoritative)::

    {"cache_format": 2, "id": <question id as in the prediction file>,
     "judge_model": "...", "judge_mode": "upstream" | "strict",
     "prompt_sha256": "<hex>", "prompt_source": "builtin:<version>" | "<template file path>",
     "temperature": null | float,
     "qa": {"question": "...", "answer": "...", "pred": "..."},
     "status": "ok" | "failed",
     "judgement": {"pred": "yes"|"no", "score": int} | null          (strict)
                  {"pred": "yes"|"no"|null, "score": int|null} | null (upstream)
     "reply": "<last raw reply text>" | null, "error": "<why it failed>" | null,
     "attempts": int, "time": "<UTC ISO 8601>"}

An entry is reused only when its judge model, judge mode, prompt hash, temperature and ``qa`` all
equal the current ones, and its stored judgement is what its reply gives under its mode; any other
entry for the same id is *stale*. Stale entries stop the run (use a fresh output directory, rerun
with the settings that made them, or allow re-judging them) rather than being mixed into the
results. Format-1 entries (written before judge modes existed) were strict-mode judgements under the
built-in prompt and are read as such. Entries whose id is not in the prediction file are *foreign*:
they are ignored and counted. ``failed`` entries are retried on the next run unless asked otherwise;
``ok`` entries are never re-sent.
"""

from __future__ import annotations

import ast
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from videollava.eval.judge_prompt import (  # noqa: F401 - PROMPT_VERSION etc. re-exported
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    PromptTemplate,
    builtin_prompt,
    template_sha256,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2
MIN_SCORE, MAX_SCORE = 0, 5

JUDGE_MODES = ("upstream", "strict")
DEFAULT_JUDGE_MODE = "upstream"


def build_messages(
    question: str, answer: str, pred: str, prompt: PromptTemplate | None = None
) -> list[dict[str, str]]:
    """Chat messages for one item (system + user) under ``prompt`` (default: the built-in one)."""
    return (prompt or builtin_prompt()).messages(question, answer, pred)


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


def judge_reply(reply: str | None, mode: str) -> dict[str, Any]:
    """The judgement of one reply under ``mode`` (see the module docstring); raises
    :class:`MalformedReplyError` for a reply that mode does not accept (it is retried)."""
    if mode == "strict":
        return parse_judgement(reply)
    if mode == "upstream":
        return upstream_judgement(parse_upstream_reply(reply))
    raise ValueError(f"unknown judge mode {mode!r} (one of {JUDGE_MODES})")


def parse_upstream_reply(reply: str | None) -> Any:
    """Upstream's acceptance test: ``ast.literal_eval`` of the reply content, nothing else (no
    stripping of code fences, no key checks). Returns the value as upstream stores it: through a JSON
    file (tuples become lists). A literal JSON cannot hold (a set, bytes) is rejected: upstream would
    leave a truncated cache file there that breaks its final aggregation."""
    try:
        value = ast.literal_eval(reply)  # type: ignore[arg-type]  # None fails here, as upstream
    except Exception as e:  # upstream: any exception -> nothing written -> retried
        raise MalformedReplyError(f"ast.literal_eval failed: {type(e).__name__}: {e}") from e
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise MalformedReplyError(f"the literal cannot be stored as JSON ({e})") from e


def upstream_judgement(value: Any) -> dict[str, Any]:
    """How upstream's aggregation loop reads one stored reply value.

    Upstream, per item: ``count += 1``; ``score_sum += int(value['score'])``; then ``yes`` when
    ``'yes' in value['pred'].lower()``, else ``no`` when ``'no' in ...``; an exception anywhere is
    printed and the rest of that item skipped (it stays in ``count``). So ``score`` is the int added to
    the score sum, or None when that step raised (then there is no verdict either), and ``pred`` is
    the verdict or None.
    """
    try:
        score = int(value["score"])
    except Exception:
        return {"pred": None, "score": None}
    try:
        text = value["pred"].lower()
        verdict = "yes" if "yes" in text else "no" if "no" in text else None
    except Exception:
        verdict = None
    return {"pred": verdict, "score": score}


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
    judge_mode: str = DEFAULT_JUDGE_MODE
    prompt: PromptTemplate = field(default_factory=builtin_prompt)
    temperature: float | None = None

    def __post_init__(self):
        if self.judge_mode not in JUDGE_MODES:
            raise ValueError(f"unknown judge mode {self.judge_mode!r} (one of {JUDGE_MODES})")

    @property
    def prompt_sha256(self) -> str:
        return self.prompt.sha256

    def identity(self) -> dict[str, Any]:
        """The fields a cache entry must share with this config to be reused."""
        return {
            "judge_model": self.judge_model,
            "judge_mode": self.judge_mode,
            "prompt_sha256": self.prompt_sha256,
            "temperature": self.temperature,
        }


# Cache entries written before judge modes existed: strict parsing under the built-in prompt.
_FORMAT_1_PROMPT_SHA256 = template_sha256(SYSTEM_PROMPT, USER_TEMPLATE)


def upgrade_entry(entry: dict) -> dict:
    """A format-1 entry made under the built-in prompt, read as the format-2 entry it stands for;
    other entries unchanged."""
    if entry.get("cache_format") == 1 and entry.get("prompt_version") == PROMPT_VERSION:
        upgraded = {k: v for k, v in entry.items() if k != "prompt_version"}
        upgraded.update(
            cache_format=CACHE_FORMAT,
            judge_mode="strict",
            prompt_sha256=_FORMAT_1_PROMPT_SHA256,
            prompt_source=f"builtin:{PROMPT_VERSION}",
        )
        return upgraded
    return entry


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
            **self.config.identity(),
            "prompt_source": self.config.prompt.source,
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
        for key, value in self.config.identity().items():
            if entry.get(key) != value:
                return f"{key} {entry.get(key)!r} != {value!r}"
        if entry.get("qa") != record.qa():
            return "question/answer/prediction text differs from the prediction file"
        status = entry.get("status")
        if status == "ok":
            try:
                expected = judge_reply(entry.get("reply"), self.config.judge_mode)
            except MalformedReplyError as e:
                return f"stored reply is not accepted under judge mode {self.config.judge_mode!r} ({e})"
            if entry.get("judgement") != expected:
                return "stored judgement is not what its reply gives"
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
                entry = upgrade_entry(entry)
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


class EndpointDownError(JudgeFatalError):
    """Too many requests in a row failed: the endpoint looks down, so the run stops (a rerun resumes)."""


class StaleCacheError(ValueError):
    """The cache directory holds entries made under another judge config or for other predictions."""


class _NoRetry(Exception):
    """An item-level error that retrying cannot fix (e.g. HTTP 400 for this input)."""


class TransientRequestError(Exception):
    """A request failed in a way a retry may fix (429, 5xx, ...); ``retry_after`` is the wait in
    seconds the server asked for (``Retry-After`` / ``retry-after-ms``), or None."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a response's headers (anything with a case-insensitive ``get``):
    ``retry-after-ms`` (milliseconds, as OpenAI sends), else ``Retry-After`` as seconds or as an
    HTTP date. None when absent or unreadable; never negative."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class RetryPolicy:
    max_retries: int = 5  # retries after the first attempt
    backoff_base: float = 1.0  # seconds before the first retry; doubles each time
    backoff_max: float = 60.0
    jitter: float = 0.1  # extra random fraction of the delay
    retry_after_max: float = 120.0  # a longer Retry-After ends the item's retries instead

    def delay(self, retry_index: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``retry_index`` (0-based): the exponential backoff, or the
        server's ``retry_after`` when that is longer."""
        d = min(self.backoff_max, self.backoff_base * (2**retry_index))
        d *= 1.0 + random.uniform(0.0, self.jitter)
        return d if retry_after is None else max(d, retry_after)


class FailureStreak:
    """Counts failed requests in a row across all workers; any reply resets it. At ``limit`` it
    raises :class:`EndpointDownError` (``limit`` None or 0: never)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.count = 0
        self.lock = threading.Lock()

    def record_reply(self) -> None:
        with self.lock:
            self.count = 0

    def record_failure(self, error: str) -> None:
        with self.lock:
            self.count += 1
            if self.limit and self.count >= self.limit:
                raise EndpointDownError(
                    f"the judge endpoint looks down: {self.count} requests in a row failed (last: "
                    f"{error}); stopped. Judged items are kept; rerun the same command to resume"
                )


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
                headers = getattr(e.response, "headers", None)
                raise TransientRequestError(f"HTTP {status}: {e}", parse_retry_after(headers)) from e
            raise _NoRetry(f"HTTP {status}: {e}") from e
        if not response.choices:
            return None
        return response.choices[0].message.content

    return complete


# pause(seconds) waits before a retry; True means the run was stopped meanwhile.
PauseFn = Callable[[float], bool]


def _judge_one(
    record: QARecord,
    complete: CompleteFn,
    config: JudgeConfig,
    policy: RetryPolicy,
    stop: threading.Event,
    pause: PauseFn,
    streak: FailureStreak,
) -> tuple[dict | None, str | None, str | None, int]:
    """Returns (judgement, last reply, error, attempts). Raises JudgeFatalError, after setting
    ``stop`` so that no worker starts another request."""
    try:
        return _judge_with_retries(record, complete, config, policy, stop, pause, streak)
    except JudgeFatalError:
        stop.set()
        raise


def _judge_with_retries(
    record: QARecord,
    complete: CompleteFn,
    config: JudgeConfig,
    policy: RetryPolicy,
    stop: threading.Event,
    pause: PauseFn,
    streak: FailureStreak,
) -> tuple[dict | None, str | None, str | None, int]:
    messages = config.prompt.messages(record.question, record.answer, record.pred)
    reply: str | None = None
    error: str | None = None
    attempts = 0
    retry_after: float | None = None
    for attempt in range(policy.max_retries + 1):
        if stop.is_set():
            return None, reply, error or "run aborted", attempts
        if attempt and pause(policy.delay(attempt - 1, retry_after)):
            return None, reply, error or "run aborted", attempts
        attempts += 1
        retry_after = None
        try:
            reply = complete(messages)
        except JudgeFatalError:
            raise
        except _NoRetry as e:
            streak.record_reply()
            return None, reply, f"request rejected: {e}", attempts
        except Exception as e:  # connection errors, timeouts, 429, 5xx: retried
            reply = None
            error = f"request failed: {type(e).__name__}: {e}"
            streak.record_failure(error)  # raises EndpointDownError at the limit
            retry_after = getattr(e, "retry_after", None)
            if retry_after is not None and retry_after > policy.retry_after_max:
                error += (
                    f" (the server asked to wait {retry_after:g} s before retrying, more than "
                    f"--max-retry-after {policy.retry_after_max:g} s; not retried)"
                )
                return None, reply, error, attempts
            logger.debug("item %s attempt %d: %s", record.id, attempts, error)
            continue
        streak.record_reply()
        try:
            return judge_reply(reply, config.judge_mode), reply, None, attempts
        except MalformedReplyError as e:
            error = f"malformed reply: {e}"
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
    max_consecutive_failures: int | None = 20,
    sleep: Callable[[float], None] | None = None,
) -> tuple[dict[str, dict], JudgeRunStats]:
    """Judge every record not already judged in ``cache``; returns (entries by id string, stats).

    The prompt and judge mode are ``cache.config``'s. Raises :class:`JudgeFatalError` on an error that
    would fail every item (:class:`EndpointDownError` after ``max_consecutive_failures`` failed
    requests in a row), and :class:`StaleCacheError` when the cache holds stale entries and
    ``overwrite_stale`` is false. ``sleep`` replaces the wait between retries (tests); by default the
    wait ends early when the run stops.
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
            f"configuration (model, --judge-mode, --judge-prompt, temperature) or for other predictions "
            f"({examples}). Rerun with the settings that made them, use a fresh --output-dir, or pass "
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

    def pause(seconds: float) -> bool:
        if sleep is None:
            return stop.wait(seconds)
        sleep(seconds)
        return stop.is_set()

    streak = FailureStreak(max_consecutive_failures)
    bar = tqdm(total=len(todo), desc="judging", unit="item", disable=not progress)
    fatal: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = {
            pool.submit(_judge_one, r, complete, cache.config, policy, stop, pause, streak): r for r in todo
        }
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


def summarize(records: list[QARecord], entries: dict[str, dict], judge_mode: str) -> dict[str, Any]:
    """Counts and metrics over ``records`` (the prediction file's items) under ``judge_mode``.

    ``judged`` counts the items with an accepted reply; ``failed`` and ``missing`` items (no accepted
    reply within the retry cap / not in the cache) enter no metric and are counted separately.

    * ``accuracy = yes / (yes + no)`` in both modes.
    * ``average_score = score_sum / score_denominator``: over ``yes + no`` in strict mode (every
      judged item has both), over every judged item in upstream mode (upstream's ``count``, which
      includes the items whose score or verdict its aggregation could not read: ``unscored`` /
      ``no_verdict``).

    ``*_pct``/``*_2dp`` are the paper formats (accuracy x 100 and score, two decimals).
    """
    if judge_mode not in JUDGE_MODES:
        raise ValueError(f"unknown judge mode {judge_mode!r} (one of {JUDGE_MODES})")
    yes = no = failed = missing = judged = unscored = no_verdict = 0
    score_sum = 0
    for record in records:
        entry = entries.get(str(record.id))
        if entry is None:
            missing += 1
        elif entry["status"] == "ok":
            judged += 1
            judgement = entry["judgement"]
            if judgement["score"] is None:
                unscored += 1
            else:
                score_sum += judgement["score"]
            if judgement["pred"] == "yes":
                yes += 1
            elif judgement["pred"] == "no":
                no += 1
            else:
                no_verdict += 1
        else:
            failed += 1
    accuracy_denominator = yes + no
    score_denominator = judged if judge_mode == "upstream" else yes + no
    accuracy = yes / accuracy_denominator if accuracy_denominator else None
    average_score = score_sum / score_denominator if score_denominator else None
    return {
        "judge_mode": judge_mode,
        "num_items": len(records),
        "judged": judged,
        "yes": yes,
        "no": no,
        "no_verdict": no_verdict,
        "unscored": unscored,
        "failed": failed,
        "missing": missing,
        "score_sum": score_sum,
        "accuracy_denominator": accuracy_denominator,
        "score_denominator": score_denominator,
        "accuracy": accuracy,
        "average_score": average_score,
        "accuracy_pct": None if accuracy is None else round(accuracy * 100, 2),
        "average_score_2dp": None if average_score is None else round(average_score, 2),
    }
