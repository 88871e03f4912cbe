"""Data-parallel runs under ``accelerate launch`` / ``torchrun`` (one process per GPU, one or several nodes).

When ``WORLD_SIZE > 1`` is set by the launcher and ``--num-chunks`` is left at 1, rank r answers chunk r of
``WORLD_SIZE`` into ``<answers>.<WORLD_SIZE>_<r>.jsonl`` on ``cuda:LOCAL_RANK``, then marks it done; rank 0
waits for every rank's mark and merges the chunk files, in rank order, into ``--answers-file``. Chunk files
must be on a filesystem every node sees. No process group is needed, and each rank resumes on its own.

``accelerate launch --num_processes N`` without ``--multi_gpu`` (e.g. on a machine without GPUs) starts
ONE process: :func:`launch_info` then prints a one-line warning naming the launch that gives N processes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from llava.eval.answers import merge_chunks


@dataclass(frozen=True)
class LaunchInfo:
    world_size: int
    rank: int
    local_rank: int


def single_process_accelerate_launch(environ: Mapping[str, str]) -> str | None:
    """The warning for an ``accelerate launch`` that asked for several processes but started one, else ``None``.

    accelerate's simple launcher (used unless ``--multi_gpu`` or a multi-GPU config is in effect) runs the
    script once; it always sets its ``ACCELERATE_*`` variables, and ``MASTER_ADDR`` / ``MASTER_PORT`` only
    when ``--num_processes`` > 1, but never ``WORLD_SIZE``. The multi-GPU launcher (torchrun) sets
    ``WORLD_SIZE``."""
    by_accelerate = "ACCELERATE_MIXED_PRECISION" in environ or "ACCELERATE_DYNAMO_BACKEND" in environ
    if not by_accelerate or "WORLD_SIZE" in environ or "MASTER_ADDR" not in environ:
        return None
    return ("warning: accelerate launch started ONE process although --num_processes > 1 was given (without "
            "--multi_gpu it runs the script once, so no data parallelism); launch with "
            "`accelerate launch --multi_gpu --num_processes N -m ...` on N GPUs, or `torchrun --nproc_per_node N "
            "-m ...` (GPUs or CPU)")


def launch_info() -> LaunchInfo | None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        warning = single_process_accelerate_launch(os.environ)
        if warning:
            print(warning, file=sys.stderr)
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
