"""Shared helpers for the benchmark scorers: strict file loading with one-line errors, small math.

Every scorer is a pure function over records that were loaded here. File problems (missing file,
bad JSON, missing key) raise :class:`ScorerInputError`, whose message is one line naming the file;
:func:`run_cli` turns it into ``error: <message>`` on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# The LLaVA-1.5 prompt suffixes (part of the question files, except where a flag appends them).
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_SUFFIX_CN = "请直接回答选项字母。"


class ScorerInputError(Exception):
    """A missing or malformed input file or record. The message is a single line."""


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
    return records, bad


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
