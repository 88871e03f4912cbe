"""Shared helpers for the benchmark scorers: strict file loading with one-line errors, small math.

Every scorer is a pure function over records that were loaded here. File problems (missing file,
bad JSON, missing key) raise :class:`ScorerInputError`, whose message is one line naming the file;
:func:`run_cli` turns it into ``error: <message>`` on stderr and exit status 2, with no traceback.

Two checks guard against answers being counted together that do not belong together:

* :func:`load_answers` refuses a file whose records were made with different settings
  (:func:`llava.eval.run_settings.check_same_settings`). Records with no settings at all (answer files
  of the original LLaVA code, ``"metadata": {}``) score as before; a file mixing such records with
  records that carry settings is refused.
* :func:`match_to_questions` pairs answers with the question file by question id (and MMBench's
  ``round_id``): an answer to a question that is not there, a question without an answer, or a question
  answered more often than the question file asks it (ids repeat there for MME and TextVQA) is refused;
  the answers come back in question-file order, so order-sensitive upstream rules (POPE's label zip,
  MME's image pairs) see the order the original scripts saw.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from llava.eval.run_settings import SettingsMismatchError, check_same_settings

# The LLaVA-1.5 prompt suffixes (part of the question files, except where a flag appends them).
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_SUFFIX_CN = "请直接回答选项字母。"
# The metadata keys that say what produced an answer (llava.eval.run_settings.record_settings).
SETTINGS_KEYS = ("method", "method_args", "run")


class ScorerInputError(Exception):
    """A missing or malformed input file or record. The message is a single line."""


class MixedSettingsError(ScorerInputError):
    """An answers file holds answers made with different settings (method, its arguments, decoding...)."""


class AnswerIdError(ScorerInputError):
    """The answers' question ids do not match the questions: an extra, a missing or a repeated id."""


def _check_exists(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ScorerInputError(f"{what} not found: {path}")
    if path.is_dir():
        raise ScorerInputError(f"{what} is a directory, expected a file: {path}")
    return path


def read_json(path: str | Path, what: str = "file") -> Any:
    """Load one JSON document."""
    path = _check_exists(Path(path), what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ScorerInputError(f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ScorerInputError(f"{what} {path} is not UTF-8 text") from None


def read_jsonl(path: str | Path, what: str = "file", *, tolerant: bool = False) -> tuple[list[Any], int]:
    """Load a JSON-lines file in file order. Blank lines are skipped.

    With ``tolerant`` (the VQAv2 and VizWiz converters do this upstream) undecodable lines are
    counted and skipped; otherwise the first one raises. Returns ``(records, bad_line_count)``.
    """
    path = _check_exists(Path(path), what)
    records: list[Any] = []
    bad = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    if tolerant:
                        bad += 1
                        continue
                    raise ScorerInputError(f"{what} {path} line {lineno} is not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ScorerInputError(f"{what} {path} is not UTF-8 text") from None
    return records, bad


def read_json_or_jsonl(path: str | Path, what: str = "file") -> list[Any]:
    """A file that is either one JSON array or JSON lines (POPE's ``coco_pope_*.json`` are JSON lines)."""
    path = _check_exists(Path(path), what)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            return data
    return read_jsonl(path, what)[0]


def load_answers(path: str | Path, *, keys: Sequence[str] = ("question_id", "text"), tolerant: bool = False,
                 what: str = "answers file") -> tuple[list[dict], int]:
    """Load a LLaVA answers file (JSON lines) in file order and check that each record has ``keys``."""
    records, bad = read_jsonl(path, what, tolerant=tolerant)
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise ScorerInputError(f"{what} {path} record {i} is not a JSON object")
        for key in keys:
            if key not in rec:
                raise ScorerInputError(f"{what} {path} record {i} has no '{key}'")
        if "text" in keys and not isinstance(rec["text"], str):
            raise ScorerInputError(f"{what} {path} record {i}: 'text' is not a string")
    check_one_setting(records, f"{what} {path}")
    return records, bad


def has_settings(record: dict) -> bool:
    """Whether a record says what produced it (``metadata`` holding ``method``, ``method_args`` or ``run``)."""
    metadata = record.get("metadata")
    return isinstance(metadata, dict) and any(metadata.get(k) is not None for k in SETTINGS_KEYS)


def check_one_setting(records: Sequence[dict], where: str) -> None:
    """Refuse records made with different settings. Records without settings are not compared, but
    they may not sit beside records that have them."""
    flags = [has_settings(r) for r in records]
    if not any(flags):
        return
    if not all(flags):
        i = flags.index(not flags[0])
        rec = records[i]
        state = "has no settings (no metadata.method/method_args/run)" if flags[0] else "carries settings"
        raise MixedSettingsError(
            f"{where} mixes answers with and without recorded settings (record {i + 1}, question "
            f"{rec.get('question_id')!r}, {state}, unlike record 1); keep one run per file")
    try:
        check_same_settings(records, where)
    except SettingsMismatchError as e:
        raise MixedSettingsError(str(e)) from None


def _few(items: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def match_to_questions(answers: Sequence[dict], question_keys: Sequence[Hashable],
                       answer_key: Callable[[dict], Hashable], answers_where: str,
                       questions_where: str, shown: Callable[[Hashable], Any] = lambda k: k) -> list[dict]:
    """``answers`` in question order, the n-th answer with a key taking the n-th question with that key.

    ``question_keys``: one key per question, in question-file order (repeats allowed); ``answer_key``: the
    same key read from an answer. Raises :class:`AnswerIdError` (one line, a few ids then a count) for keys
    that are not questions, for keys answered more often than asked, and for questions with no answer.
    """
    asked = Counter(question_keys)
    got = Counter(answer_key(a) for a in answers)
    extra = [shown(k) for k in got if k not in asked]
    if extra:
        raise AnswerIdError(
            f"{answers_where} answers {len(extra)} question id(s) that are not in {questions_where}: "
            f"{_few(extra)}; score it against the question file it was made from (--question-file)")
    repeated = [k for k in got if got[k] > asked[k]]
    if repeated:
        detail = [f"{shown(k)!r} x{got[k]} (asked {asked[k]}x)" for k in repeated]
        more = f" and {len(detail) - 5} more" if len(detail) > 5 else ""
        raise AnswerIdError(
            f"{answers_where} answers {len(repeated)} question id(s) more often than {questions_where} asks: "
            f"{', '.join(detail[:5])}{more}; keep one answer per question (delete the repeats, or rerun with --overwrite)")
    missing = [shown(k) for k in asked if got[k] < asked[k]]
    if missing:
        unanswered = sum(asked[k] - got[k] for k in asked)
        raise AnswerIdError(
            f"{answers_where} has no answer for {unanswered} of {len(question_keys)} questions of "
            f"{questions_where}: {_few(missing)}; finish the run (rerun it: it resumes) or score against a "
            "question file holding only the questions that ran (--question-file)")
    slots: dict[Hashable, list[int]] = defaultdict(list)
    for position, key in enumerate(question_keys):
        slots[key].append(position)
    taken: Counter = Counter()
    placed = []
    for a in answers:
        key = answer_key(a)
        placed.append((slots[key][taken[key]], a))
        taken[key] += 1
    placed.sort(key=lambda pair: pair[0])
    return [a for _, a in placed]


def check_unique_ids(answers: Sequence[dict], where: str,
                     key: Callable[[dict], Hashable] = lambda a: qid_key(a["question_id"])) -> None:
    """Refuse answers that repeat a question id (for benchmarks whose question ids are unique)."""
    counts = Counter(key(a) for a in answers)
    repeated = [k for k, n in counts.items() if n > 1]
    if repeated:
        detail = [f"{k!r} x{counts[k]}" for k in repeated]
        more = f" and {len(detail) - 5} more" if len(detail) > 5 else ""
        raise AnswerIdError(f"{where} answers {len(repeated)} question id(s) more than once: "
                            f"{', '.join(detail[:5])}{more}; keep one answer per question (delete the repeats, or rerun with --overwrite)")


def require_keys(rec: Any, keys: Iterable[str], where: str) -> dict:
    if not isinstance(rec, dict):
        raise ScorerInputError(f"{where} is not a JSON object")
    for key in keys:
        if key not in rec:
            raise ScorerInputError(f"{where} has no '{key}'")
    return rec


def read_tsv(path: str | Path, what: str = "tsv file") -> tuple[list[str], list[dict[str, str]]]:
    """Read a tab-separated file with a header row (MMBench). Empty cells are ``""``."""
    path = _check_exists(Path(path), what)
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            try:
                header = next(reader)
            except StopIteration:
                raise ScorerInputError(f"{what} {path} is empty") from None
            rows = []
            for lineno, cells in enumerate(reader, 2):
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise ScorerInputError(
                        f"{what} {path} row {lineno} has {len(cells)} cells, the header has {len(header)}")
                rows.append(dict(zip(header, cells)))
    except UnicodeDecodeError:
        raise ScorerInputError(f"{what} {path} is not UTF-8 text") from None
    except csv.Error as e:
        raise ScorerInputError(f"{what} {path} is not a valid tsv ({e})") from None
    return header, rows


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        if indent is not None:
            f.write("\n")
    return path


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def qid_key(qid: Any) -> str:
    """Question ids are ints in some files and strings in others; join on their string form."""
    return str(qid)


def safe_div(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (upstream divides by zero there)."""
    return num / den if den else 0.0


def pct(num: float, den: float) -> float:
    return 100.0 * safe_div(num, den)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a scorer CLI; input problems print ``error: ...`` (one line) and return 2, no traceback."""
    try:
        rc = main(argv)
    except ScorerInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    return int(rc or 0)
