"""Answer files: one JSON record per line, appended per record, resumable by question.

One answers file belongs to one writer at a time and to one set of settings:

* :class:`AnswerWriter` holds an exclusive lock beside the file (:mod:`llava.eval.filelock`) while it writes,
  so a second writer (a rerun while an orphaned run still lives, two loaders on one file) stops with a message
  naming the holder instead of answering everything again;
* resuming compares the settings every record carries (:mod:`llava.eval.run_settings`) with the current run's
  and refuses a file made with other settings (or before settings were recorded);
* a tail cut by a killed run is repaired before anything is appended: a complete last record without its
  newline gets it, an incomplete last line is dropped (with a note);
* records are written with one ``os.write`` each; a failed write (e.g. a full disk) is cut back to the last
  complete record and reported in one line;
* when a run ends with the records out of question order (``--retry-errors`` appends the retried answers at
  the end), the file is rewritten in question order (a temporary file, then ``os.replace``).

``python -m llava.eval.answers merge MERGED CHUNK [CHUNK ...]`` merges chunk files (see :func:`merge_chunks`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from llava.eval.filelock import FileLockedError, exclusive_lock
from llava.eval.questions import answer_key, with_occurrence
from llava.eval.run_settings import (
    SettingsMismatchError,
    check_same_settings,
    record_settings,
    settings_difference,
)

# A writer that finds the file locked retries for this long: an orphan killed with its runner (see
# llava.eval.parent_watch) needs a moment to exit and release the lock.
LOCK_WAIT_S = 5.0


class AnswersFileError(ValueError):
    """The answers file cannot be used (a folder, not writable, the disk is full, one of the run's inputs)."""


def _note_to_stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def refuse_input_as_answers(answers_path: str, inputs: dict[str, str]) -> None:
    """Raise :class:`AnswersFileError` when ``answers_path`` is one of the run's input files (``{flag: path}``).
    Called before anything is written: appending answers to a question file (or ``--overwrite`` replacing it)
    would destroy the questions."""
    for flag, input_path in inputs.items():
        if not input_path:
            continue
        same = os.path.realpath(answers_path) == os.path.realpath(input_path)
        if not same and os.path.exists(answers_path) and os.path.exists(input_path):
            same = os.path.samefile(answers_path, input_path)
        if same:
            raise AnswersFileError(
                f"the answers file {answers_path} is the {flag} file; answers would be written into it: pass "
                "another answers file"
            )


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err)


def _lock_when_free(path: str, wait_s: float) -> contextlib.ExitStack:
    """The exclusive lock of ``path`` (held until the returned stack is closed); waits up to ``wait_s`` seconds
    for another holder to exit, then raises :class:`FileLockedError`."""
    deadline = time.monotonic() + wait_s
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive_lock(path, "answers file"))
            return stack
        except FileLockedError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def _is_error_record(record: dict[str, Any]) -> bool:
    return isinstance(record.get("metadata"), dict) and bool(record["metadata"].get("error"))


class AnswerWriter:
    """Appends answer records (JSON lines) to ``path``; see the module docstring.

    Args:
        settings: :func:`llava.eval.run_settings.record_settings` of this run's records; every record already
            in the file must have the same (else :class:`SettingsMismatchError`).
        order: the keys (:attr:`llava.eval.questions.EvalItem.key`) of this run's questions in question order;
            :meth:`close` rewrites the file in this order when it is not.
        overwrite: start a fresh file instead of resuming.
        retry_errors: drop records whose ``metadata`` holds an ``error`` (written with ``--skip-bad-inputs``)
            so those questions run again.
        notify: receives the one-line notes (a repaired tail, dropped error records).
    """

    def __init__(self, path: str, settings: dict[str, Any], order: list[str], overwrite: bool = False,
                 retry_errors: bool = False, notify: Callable[[str], None] = _note_to_stderr,
                 lock_wait_s: float = LOCK_WAIT_S):
        self.path = path
        self._order = {key: i for i, key in enumerate(order)}
        self._notify = notify
        if os.path.isdir(path):
            raise AnswersFileError(f"the answers file {path} is a folder; pass a file path (e.g. {path}/answers.jsonl)")
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            self._lock = _lock_when_free(path, lock_wait_s)
        except OSError as err:  # (a FileLockedError, a ValueError, passes through)
            raise AnswersFileError(f"cannot write answers file {path}: {_os_reason(err)} (folder {folder}); "
                                   "make it writable or pass another answers file") from None
        try:
            self._keys = [] if overwrite else self._resume(settings, retry_errors)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if overwrite else 0)
            self._fd = os.open(path, flags, 0o644)
        except OSError as err:
            self._lock.close()
            raise AnswersFileError(f"cannot write answers file {path}: {_os_reason(err)}; make it writable or pass "
                                   "another answers file") from None
        except BaseException:
            self._lock.close()
            raise
        self.answered = set(self._keys)

    # -- resume --------------------------------------------------------------------------------------------------

    def _resume(self, settings: dict[str, Any], retry_errors: bool) -> list[str]:
        """Read, repair and check the existing file; returns the keys of the records kept, in file order."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return []
        with open(self.path, "rb") as f:
            data = f.read()
        records, good_end = self._parse(data)
        self._check_settings(records, settings)  # before anything in the file changes
        if good_end < len(data) or not data.endswith(b"\n"):
            self._repair_tail(data, good_end)
        keys, kept_lines, occurrences = [], [], {}
        for record, line in records:
            base = answer_key(record)
            occurrence = occurrences.get(base, 0)
            occurrences[base] = occurrence + 1
            if retry_errors and _is_error_record(record):
                continue
            keys.append(with_occurrence(base, occurrence))
            kept_lines.append(line)
        if len(kept_lines) < len(records):
            self._notify(f"--retry-errors: {len(records) - len(kept_lines)} answer(s) recorded with an error in "
                         f"{self.path} will be rerun")
            self._replace_lines(kept_lines)
        return keys

    def _parse(self, data: bytes) -> tuple[list[tuple[dict[str, Any], bytes]], int]:
        """(records with their lines, the byte offset where the good part of ``data`` ends: after the last
        complete record, its newline included when there is one)."""
        lines = data.split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records, offset, good_end = [], 0, 0
        for i, line in enumerate(lines):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                record = None
            if not isinstance(record, dict):
                if i == last:  # a write cut short by a killed run
                    return records, start
                raise AnswersFileError(f"{self.path}, line {i + 1} is not a JSON answer record; fix or delete "
                                       "that line, or rerun with --overwrite")
            records.append((record, line))
            good_end = min(offset, len(data))
        return records, good_end if records else 0

    def _repair_tail(self, data: bytes, good_end: int) -> None:
        """Cut ``data`` after its last complete record and end that record with a newline."""
        if data[good_end:].strip():
            self._notify(f"dropped an incomplete last line of {self.path} (an interrupted write); that question "
                         "runs again")
        try:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                if good_end and data[good_end - 1:good_end] != b"\n":  # a complete record without its newline
                    f.seek(good_end)
                    f.write(b"\n")
        except OSError as err:
            raise AnswersFileError(f"cannot repair the last line of {self.path}: {_os_reason(err)}") from None

    def _check_settings(self, records: list[tuple[dict[str, Any], bytes]], settings: dict[str, Any]) -> None:
        fix = "rerun with --overwrite to replace them, or write to another answers file"
        for n, (record, _) in enumerate(records, 1):
            recorded = record_settings(record)
            if recorded["run"] is None:
                raise SettingsMismatchError(
                    f"{self.path} holds answers written before run settings were recorded (record {n} has no "
                    f"metadata.run), so resuming cannot tell whether they match this run; {fix}"
                )
            diff = settings_difference(recorded, settings)
            if diff:
                raise SettingsMismatchError(
                    f"{self.path} holds answers made with other settings than this run (record {n}: {diff}, "
                    f"recorded vs now); {fix}"
                )

    def _replace_lines(self, lines: list[bytes]) -> None:
        """Atomically replace the file's content with ``lines``."""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(line + b"\n" for line in lines))
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    # -- writing -------------------------------------------------------------------------------------------------

    def is_answered(self, key: str) -> bool:
        """``key``: :func:`llava.eval.questions.answer_key` of the record (``EvalItem.key``)."""
        return key in self.answered

    def write(self, record: dict[str, Any], key: str) -> None:
        """Append ``record``, the answer to the question with key ``key``, in one write; a failed write is cut
        back to the last complete record and raised as :class:`AnswersFileError`."""
        data = memoryview((json.dumps(record) + "\n").encode("utf-8"))
        size = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise AnswersFileError(
                f"cannot write to answers file {self.path}: {_os_reason(err)}; the {len(self._keys)} answers "
                "already in it are kept, fix that and rerun to resume"
            ) from None
        self._keys.append(key)
        self.answered.add(key)

    def close(self) -> None:
        """Put the file in question order if it is not, and release it."""
        if self._fd < 0:
            return
        try:
            os.close(self._fd)
            self._fd = -1
            self._put_in_question_order()
        finally:
            self._lock.close()

    def _put_in_question_order(self) -> None:
        ranks = [self._order.get(key, len(self._order)) for key in self._keys]
        if all(a <= b for a, b in zip(ranks, ranks[1:])):
            return
        try:
            with open(self.path, "rb") as f:
                lines = [line for line in f.read().split(b"\n") if line.strip()]
            if len(lines) != len(self._keys):
                raise OSError(f"expected {len(self._keys)} records, found {len(lines)}")
            order = sorted(range(len(lines)), key=lambda i: ranks[i])  # stable: unknown keys keep their order
            self._replace_lines([lines[i] for i in order])
        except OSError as err:
            self._notify(f"could not rewrite {self.path} in question order ({_os_reason(err)}); its answers are "
                         "complete but out of order")

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_chunks(chunk_files: list[str], merged: str) -> int:
    """Concatenate chunk answer files in order into ``merged`` (written atomically); returns the number of
    records. Raises :class:`SettingsMismatchError` when the chunks hold answers made with different settings."""
    lines: list[str] = []
    records: list[dict[str, Any]] = []
    for path in chunk_files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise AnswersFileError(f"{path}, line {lineno} is not valid JSON; rerun its chunk to repair "
                                           "it") from None
                lines.append(line if line.endswith("\n") else line + "\n")
    check_same_settings(records, f"the chunk files {', '.join(chunk_files)}")
    tmp = merged + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.writelines(lines)
    os.replace(tmp, merged)
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llava.eval.answers", description="Answer-file tools")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge chunk answer files, in the order given, into one file")
    merge.add_argument("merged")
    merge.add_argument("chunks", nargs="+")
    args = parser.parse_args(argv)
    try:
        n = merge_chunks(args.chunks, args.merged)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged {n} answers into {args.merged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
