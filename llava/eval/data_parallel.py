"""Data-parallel runs under ``accelerate launch`` / ``torchrun`` (one process per GPU, one or several nodes).

When ``WORLD_SIZE > 1`` is set by the launcher and ``--num-chunks`` is left at 1, rank r answers chunk r of
``WORLD_SIZE`` into ``<answers>.<WORLD_SIZE>_<r>.jsonl`` on ``cuda:LOCAL_RANK``, then marks it done; rank 0
waits for every rank's mark and merges the chunk files, in rank order, into ``--answers-file``. Chunk files
must be on a filesystem every node sees. No process group is needed, and each rank resumes on its own.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from llava.eval.answers import merge_chunks


@dataclass(frozen=True)
class LaunchInfo:
    world_size: int
    rank: int
    local_rank: int


def launch_info() -> LaunchInfo | None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return LaunchInfo(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))


def chunk_file(answers_file: str, world: int, rank: int) -> str:
    stem = answers_file[: -len(".jsonl")] if answers_file.endswith(".jsonl") else answers_file
    return f"{stem}.{world}_{rank}.jsonl"


def mark_done(path: str) -> None:
    with open(path + ".done", "w") as f:
        f.write("done\n")


def merge_when_done(answers_file: str, world: int, timeout_s: float = 7 * 24 * 3600, poll_s: float = 5.0) -> int:
    """Rank 0: wait until every rank marked its chunk done, then merge in rank order. Returns lines merged."""
    files = [chunk_file(answers_file, world, r) for r in range(world)]
    deadline = time.time() + timeout_s
    while not all(os.path.exists(f + ".done") for f in files):
        if time.time() > deadline:
            missing = [f for f in files if not os.path.exists(f + ".done")]
            raise TimeoutError(f"ranks did not finish: {missing}; rerun to resume")
        time.sleep(poll_s)
    lines = merge_chunks(files, answers_file)
    for f in files:
        os.remove(f + ".done")
    return lines
