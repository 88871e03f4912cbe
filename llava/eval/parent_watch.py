"""Inference processes started by a runner end when the runner ends, however it ends (``kill -9`` included).

A runner (:mod:`llava.eval.run_benchmark`, ``scripts/video/eval/run_qa_runner.sh``) puts its own pid in the
children's environment (:data:`PARENT_ENV`); an entry point calls :func:`exit_with_parent` first thing. On Linux
the kernel then sends the child ``SIGTERM`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
daemon thread polls the parent pid. An orphan therefore stops writing at once, and its answers-file lock is
released when it exits, so a rerun resumes instead of racing it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "LLAVA_EVAL_PARENT_PID"
PR_SET_PDEATHSIG = 1


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus this process's pid as the parent that children must not outlive."""
    return dict(env, **{PARENT_ENV: str(os.getpid())})


def _ask_kernel_for_sigterm() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _poll_parent(parent: int, interval_s: float) -> None:
    while _alive(parent):
        time.sleep(interval_s)
    os.kill(os.getpid(), signal.SIGTERM)


def exit_with_parent(interval_s: float = 1.0) -> None:
    """When started by a runner (:data:`PARENT_ENV` set), end this process with ``SIGTERM`` when the runner
    dies; if it is already gone, end now. No-op otherwise.

    The kernel watches the direct parent; when something sits between the runner and this process (a wrapper
    named in ``PYTHON``), a daemon thread polls the runner's pid instead."""
    value = os.environ.get(PARENT_ENV, "")
    if not value.isdigit():
        return
    parent = int(value)
    if os.getppid() == parent and _ask_kernel_for_sigterm():
        if os.getppid() != parent:  # the runner died before the kernel was asked
            os.kill(os.getpid(), signal.SIGTERM)
        return
    if not _alive(parent):
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_poll_parent, args=(parent, interval_s), daemon=True, name="parent-watch").start()
