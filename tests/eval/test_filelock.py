"""The answers-file lock: one writer at a time, released however the holder exits."""

import os
import signal
import subprocess
import sys
import time

import pytest

from llava.eval.filelock import FileLockedError, exclusive_lock, lock_path

HOLD = """
import sys, time
from llava.eval.filelock import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _start_holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    target = tmp_path / "answers.jsonl"
    holder = _start_holder(target)
    try:
        with pytest.raises(FileLockedError) as err:
            with exclusive_lock(str(target)):
                pass
        message = str(err.value)
        assert f"pid {holder.pid}" in message and str(target) in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    target = tmp_path / "answers.jsonl"
    holder = _start_holder(target)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert os.path.exists(lock_path(str(target)))  # a stale file is left behind ...
    with exclusive_lock(str(target)):  # ... and does not block
        pass


def test_lock_is_reentrant_across_sequential_uses(tmp_path):
    target = str(tmp_path / "a" / "answers.jsonl")
    for _ in range(2):
        start = time.time()
        with exclusive_lock(target):
            pass
        assert time.time() - start < 5
