"""The bad-input matrix of the image entry points (issue 12, items 5-9).

Every row breaks one input of ``python -m llava.eval.model_vqa_loader`` run on a question file whose first three
questions are already answered in the answers file. The run must end with exit status 2, print exactly one
``error: ...`` line naming the problem (and the path), print no traceback, and leave the earlier answers (and the
question file) byte-for-byte as they were.

A row is ``pytest.param(setup, id=...)``: ``setup(case)`` edits the :class:`Case` (paths, extra flags, a Python
prelude run in the subprocess before the entry point, a folder to make read-only) and returns a regular
expression the error line must match.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from llava.eval import model_vqa_loader
from tests.conftest import write_vqa_questions
from tests.model.test_checkpoint_errors import CORRUPTIONS, PROBLEM_WORDS, copy_checkpoint, corrupt

ROOT = Path(__file__).resolve().parents[2]
RUN_FLAGS = ["--num-workers", "0", "--max_new_tokens", "4"]
ANSWERED = 3  # questions 100..102 are answered before each row runs


@dataclass
class Case:
    """One run of the entry point; a row's setup edits it."""

    tmp: Path
    model_path: str
    question_file: str
    image_folder: str
    answers_file: str
    extra: list[str] = field(default_factory=list)
    prelude: str = ""  # Python run in the subprocess before the entry point (fault injection)
    read_only_folder: str | None = None


@pytest.fixture(scope="module")
def earlier_answers(tiny_hf, image_folder, tmp_path_factory) -> bytes:
    """The answers file of the first three questions, made with RUN_FLAGS."""
    folder = tmp_path_factory.mktemp("earlier")
    questions = write_vqa_questions(str(folder / "q.jsonl"), ANSWERED)
    answers = folder / "a.jsonl"
    model_vqa_loader.main(["--model-path", tiny_hf, "--question-file", questions, "--image-folder", image_folder,
                           "--answers-file", str(answers), *RUN_FLAGS])
    return answers.read_bytes()


def _bomb_png(path: Path, side: int = 14000) -> None:
    """A tiny PNG whose header declares ``side`` x ``side`` pixels (over PIL's decompression-bomb limit)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def decompression_bomb(case: Case) -> str:
    bomb = case.tmp / "bomb.png"
    _bomb_png(bomb)
    lines = Path(case.question_file).read_text().splitlines()
    lines[ANSWERED] = lines[ANSWERED].replace('"img3.png"', f'"{bomb}"')
    Path(case.question_file).write_text("\n".join(lines) + "\n")
    return rf"question 103: image {bomb} is too large to open safely \(Image size \(196000000 pixels\)"


def empty_question_file(case: Case) -> str:
    Path(case.question_file).write_text("")
    return rf"question file {case.question_file} holds no questions"


def question_file_as_answers(case: Case) -> str:
    case.answers_file = case.question_file
    return rf"the answers file {case.question_file} is the --question-file file"


def question_file_as_answers_overwrite(case: Case) -> str:
    case.extra.append("--overwrite")
    return question_file_as_answers(case)


def read_only_answers_folder(case: Case) -> str:
    case.read_only_folder = os.path.dirname(case.answers_file)
    return rf"cannot write answers file {case.answers_file}: (Permission denied|Read-only file system)"


def answers_path_is_a_folder(case: Case) -> str:
    case.answers_file = str(case.tmp / "answers_folder")
    os.mkdir(case.answers_file)
    return rf"the answers file {case.answers_file} is a folder"


def full_disk(case: Case) -> str:
    """Every write to the answers file writes half its bytes, then fails with ENOSPC (as a full disk does)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to recognise the answers file's descriptor")
    case.prelude = (
        "import errno, os\n"
        "_write = os.write\n"
        "def _full_disk(fd, data):\n"
        f"    if os.path.realpath(f'/proc/self/fd/{{fd}}') == {os.path.realpath(case.answers_file)!r}:\n"
        "        _write(fd, bytes(data[: len(data) // 2]))\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return _write(fd, data)\n"
        "os.write = _full_disk\n"
    )
    return (rf"cannot write to answers file {case.answers_file}: No space left on device; the {ANSWERED} answers "
            "already in it are kept")


def _read_only(folder: str, argv: list[str]) -> list[str]:
    """``argv`` run with ``folder`` read-only: permission bits, or for root (who ignores them) a read-only bind
    mount in a private mount namespace."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return argv
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount, folder, "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("running as root without a way to make a folder read-only (unshare -m)")
    return ["unshare", "-m", "sh", "-c", mount, folder, *argv]


def damaged_weights(case: Case, how: str) -> str:
    """A copy of the checkpoint (same folder name: it is the recorded ``model_id``) with a damaged weight file."""
    copy = Path(copy_checkpoint(case.model_path, case.tmp / "ckpt" / os.path.basename(case.model_path)))
    weights = corrupt(str(copy / "model.safetensors"), how)
    case.model_path = str(copy)
    return rf"{re.escape(weights)}.*{re.escape(PROBLEM_WORDS[how])}"


def budget_zero(case: Case) -> str:
    case.extra += ["--method", "fastv", "--visual-token-num", "0"]
    return r"--visual-token-num must be >= 1"


@pytest.mark.parametrize("setup", [
    pytest.param(decompression_bomb, id="5-decompression-bomb"),
    pytest.param(empty_question_file, id="6-empty-question-file"),
    pytest.param(question_file_as_answers, id="6-question-file-as-answers"),
    pytest.param(question_file_as_answers_overwrite, id="6-question-file-as-answers-overwrite"),
    *[pytest.param(functools.partial(damaged_weights, how=how), id=f"7-weights-{how.replace(' ', '-')}")
      for how in CORRUPTIONS],
    pytest.param(read_only_answers_folder, id="8-read-only-answers-folder"),
    pytest.param(answers_path_is_a_folder, id="8-answers-path-is-a-folder"),
    pytest.param(full_disk, id="8-full-disk"),
    pytest.param(budget_zero, id="9-budget-zero"),
])
def test_bad_input_is_one_line_and_keeps_earlier_answers(setup, tiny_hf, image_folder, earlier_answers, tmp_path):
    answers = tmp_path / "answers" / "a.jsonl"
    answers.parent.mkdir()
    answers.write_bytes(earlier_answers)
    case = Case(tmp_path, tiny_hf, write_vqa_questions(str(tmp_path / "q.jsonl"), 6), image_folder, str(answers))
    pattern = setup(case)
    kept = {path: Path(path).read_bytes() for path in {str(answers), case.question_file}}

    code = ("import sys\n" + case.prelude + "from llava.eval.model_vqa_loader import main\nmain(sys.argv[1:])\n")
    argv = [sys.executable, "-c", code, "--model-path", case.model_path, "--question-file", case.question_file,
            "--image-folder", case.image_folder, "--answers-file", case.answers_file, *RUN_FLAGS, *case.extra]
    if case.read_only_folder:
        argv = _read_only(case.read_only_folder, argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if case.read_only_folder:
        os.chmod(case.read_only_folder, 0o755)

    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]
    for path, content in kept.items():
        assert Path(path).read_bytes() == content, f"{path} changed"
