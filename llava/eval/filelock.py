"""An exclusive, advisory lock beside an output file, so that two writers never append to one file.

    with exclusive_lock("answers.jsonl"):   # holds answers.jsonl.lock for the duration
        ...

The lock is ``fcntl.flock`` on ``<path>.lock``: the operating system releases it when the holder exits,
however it exits (``kill -9`` included), so a stale lock file never blocks a rerun. The file records who
holds it (pid, host, command line, start time); a second writer gets :class:`FileLockedError` naming that
holder instead of writing duplicates.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
from collections.abc import Iterator


class FileLockedError(ValueError):
    """Another live process holds the lock; the message names it and what to do."""


def lock_path(path: str) -> str:
    return path + ".lock"


def _holder_description(lock_file: str) -> str:
    try:
        with open(lock_file, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return text or "an unknown process"


@contextlib.contextmanager
def exclusive_lock(path: str, what: str = "answers file") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (via ``path + '.lock'``) for the body of the ``with``.

    Raises :class:`FileLockedError` at once (no waiting) when another process holds it.
    """
    lock_file = lock_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(lock_file)), exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_description(lock_file)
            raise FileLockedError(
                f"{what} {path} is being written by another process ({holder}); wait for it to finish or stop "
                f"it (kill that pid), then rerun to resume"
            ) from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        info = f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8", "replace"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
