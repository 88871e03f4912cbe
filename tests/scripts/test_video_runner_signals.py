"""scripts/video/eval/run_qa_runner.sh ends its chunk processes when it is stopped (SIGTERM, SIGINT, SIGHUP: trap,
forward, wait) or killed (SIGKILL: the chunk processes end themselves). The chunk processes are stand-ins that
call llava.eval.parent_watch.exit_with_parent as the real entry point does, then sleep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$2" == "videollava.eval.run_inference_video_qa" ]]; then
    exec "$REAL_PYTHON" -c "
import os, time
from llava.eval.parent_watch import exit_with_parent
exit_with_parent()
open(os.path.join(os.environ['PID_DIR'], str(os.getpid())), 'w').close()
time.sleep(120)"
fi
exec "$REAL_PYTHON" "$@"
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_chunk_processes_end_with_the_runner(tmp_path, sig):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    env = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, PID_DIR=str(pid_dir), PYTHONPATH=str(ROOT),
               DATA_ROOT=str(tmp_path / "data"), CUDA_VISIBLE_DEVICES="0,1", MODEL_PATH=str(tmp_path))
    env.pop("EVAL_ROOT", None)
    runner = subprocess.Popen(["bash", str(ROOT / "scripts/video/eval/run_qa_msvd.sh"), "16"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(os.listdir(pid_dir)) < 2:
        assert runner.poll() is None, runner.communicate()[1]
        assert time.monotonic() < deadline, "the chunk processes did not start"
        time.sleep(0.05)
    children = [int(name) for name in os.listdir(pid_dir)]
    os.kill(runner.pid, sig)
    _, err = runner.communicate(timeout=30)
    if sig == signal.SIGKILL:
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "an orphaned chunk process is still running"
            time.sleep(0.05)
    else:  # the runner forwarded the signal and waited
        assert runner.returncode == 128 + sig and f"stopped by {signal.Signals(sig).name}" in err, err
        assert not any(_alive(pid) for pid in children)
