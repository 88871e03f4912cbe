"""The kill test (issue 12, item 3): the benchmark script killed with SIGTERM (what `timeout` sends) and with SIGKILL
at random moments while it answers, then rerun, leaves exactly one answer per question and the same answers and
scores as an uninterrupted run; no inference process outlives a killed runner."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from llava.data.mini import generate
from tests.conftest import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "v1_5", "eval", "baseline", "pope.sh")
FLAGS = ["--", "--num-workers", "0", "--max_new_tokens", "3"]
LABEL = "none_max-new-tokens-3"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _start(tiny_hf: str, data_root: str) -> subprocess.Popen:
    env = dict(os.environ, MODEL_PATH=tiny_hf, DATA_ROOT=data_root, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable,
               PYTHONPATH=ROOT, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(["bash", SCRIPT, *FLAGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _paths(data_root: str) -> tuple[str, str, str]:
    answers = os.path.join(data_root, "pope", "answers", "tiny-llava-hf", LABEL)
    results = os.path.join(data_root, "pope", "results", "tiny-llava-hf", LABEL, "576.json")
    return os.path.join(answers, "full_chunks", "1_0.jsonl"), os.path.join(answers, "full.jsonl"), results


def _records(path: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for line in f if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_while_answering(tiny_hf: str, data_root: str, sig: int, rng: random.Random) -> list[int]:
    """Start the script, wait until its chunk process has written 1-2 more answers, wait a random moment, send
    ``sig`` to the script; returns the chunk process pids it had."""
    chunk, _, _ = _paths(data_root)
    before = _records(chunk)
    proc = _start(tiny_hf, data_root)
    target, deadline = before + rng.randint(1, 2), time.monotonic() + 300
    while _records(chunk) < target:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no answers written"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.15))
    children = _children(proc.pid)
    assert children and proc.poll() is None, "the run ended before the kill"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), err[-3000:]
    assert "Traceback" not in err
    return children


def test_killed_and_rerun_equals_uninterrupted(tiny_hf, tmp_path):
    rng = random.Random(12)
    reference_root, killed_root = str(tmp_path / "reference"), str(tmp_path / "killed")
    for root in (reference_root, killed_root):
        generate(root, ["pope"])
    reference = _start(tiny_hf, reference_root)
    assert reference.wait(timeout=600) == 0, reference.communicate()[1][-3000:]

    # SIGTERM: the runner stops its chunk process and waits for it before exiting
    children = _kill_while_answering(tiny_hf, killed_root, signal.SIGTERM, rng)
    assert not any(_alive(pid) for pid in children)
    # SIGKILL: the runner cannot clean up; its orphaned chunk process must end by itself, at once
    children = _kill_while_answering(tiny_hf, killed_root, signal.SIGKILL, rng)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "an orphaned chunk process is still running"
        time.sleep(0.05)

    rerun = _start(tiny_hf, killed_root)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    chunk, merged, results = _paths(killed_root)
    _, reference_merged, reference_results = _paths(reference_root)
    answers, expected = read_jsonl(merged), read_jsonl(reference_merged)
    assert [a["question_id"] for a in answers] == [a["question_id"] for a in expected]  # once each, in order
    assert len(read_jsonl(chunk)) == len(expected) == 6
    assert [a["text"] for a in answers] == [a["text"] for a in expected]
    scores, expected_scores = json.load(open(results)), json.load(open(reference_results))
    assert scores["metrics"] == expected_scores["metrics"] and scores["headline"] == expected_scores["headline"]
