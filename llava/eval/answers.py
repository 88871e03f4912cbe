"""Answer files: appended and flushed per record, resumable by question id."""

from __future__ import annotations

import json
import os
from typing import Any

from llava.eval.questions import answer_key, with_occurrence


class AnswerWriter:
    """Appends answer records (JSON lines) to ``path``.

    On open it reads the records already there, so a rerun skips answered questions. A last line cut
    short by a killed run is dropped (and reported); earlier lines must be valid JSON.

    Args:
        overwrite: start a fresh file instead of resuming.
        retry_errors: drop records whose ``metadata`` holds an ``error`` (written with
            ``--skip-bad-inputs``) so those questions run again.
    """

    def __init__(self, path: str, overwrite: bool = False, retry_errors: bool = False):
        self.path = path
        self.dropped_partial_line = False
        self.records: list[dict[str, Any]] = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if overwrite or not os.path.exists(path):
            open(path, "w").close()
        else:
            self._read_existing(retry_errors)
        self._occurrences: dict[str, int] = {}
        self.answered: set[str] = set()
        for rec in self.records:
            self._add(rec)
        self._file = open(path, "a", encoding="utf-8")

    def _read_existing(self, retry_errors: bool) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        complete, rewrite = [], False
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i >= len(lines) - 2:  # the last line: an interrupted write
                    self.dropped_partial_line, rewrite = True, True
                    continue
                raise ValueError(
                    f"{self.path}, line {i + 1} is not valid JSON; fix or delete it, or rerun with --overwrite"
                ) from None
            if retry_errors and isinstance(rec.get("metadata"), dict) and rec["metadata"].get("error"):
                rewrite = True
                continue
            complete.append(rec)
        self.records = complete
        if rewrite:
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in complete:
                    f.write(json.dumps(rec) + "\n")
            os.replace(tmp, self.path)

    def _add(self, record: dict[str, Any]) -> None:
        base = answer_key(record)
        occurrence = self._occurrences.get(base, 0)
        self._occurrences[base] = occurrence + 1
        self.answered.add(with_occurrence(base, occurrence))

    def is_answered(self, key: str) -> bool:
        """``key``: :func:`llava.eval.questions.answer_key` of the record (``EvalItem.key``)."""
        return key in self.answered

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._add(record)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_chunks(chunk_files: list[str], merged: str) -> int:
    """Concatenate chunk answer files in order into ``merged``; returns the number of lines."""
    lines = 0
    tmp = merged + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for path in chunk_files:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        out.write(line if line.endswith("\n") else line + "\n")
                        lines += 1
    os.replace(tmp, merged)
    return lines
