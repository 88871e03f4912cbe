"""Damaged or missing checkpoint files give one line naming the file and the problem (issue 12 item 7)."""

import os
import shutil
import subprocess
import sys

import pytest

from llava.eval import model_vqa_loader
from llava.model.builder import load_pretrained_model
from llava.model.original_layout import CheckpointError
from llava.model.tiny import CLIP_FOLDER_NAME


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _garbage(data: bytes) -> bytes:
    return bytes((i * 131 + 7) % 256 for i in range(4096))


def _damaged_header(data: bytes) -> bytes:
    header_len = int.from_bytes(data[:8], "little")
    return data[:8] + b"#" * header_len + data[8 + header_len :]


def _empty(data: bytes) -> bytes:
    return b""


CORRUPTIONS = {"truncated": _truncated, "garbage": _garbage, "damaged header": _damaged_header, "empty": _empty}
# words each message must use for the problem
PROBLEM_WORDS = {"truncated": "truncated", "garbage": "not a safetensors file", "damaged header": "damaged",
                 "empty": "empty"}


def corrupt(path: str, how: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(CORRUPTIONS[how](data))
    return path


def copy_checkpoint(src: str, dst) -> str:
    return shutil.copytree(src, str(dst))


def _load_error(path: str) -> str:
    with pytest.raises(CheckpointError) as exc:
        load_pretrained_model(path, device="cpu")
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_damaged_hf_weights_are_named(tiny_hf, tmp_path, how):
    ckpt = copy_checkpoint(tiny_hf, tmp_path / "ckpt")
    path = corrupt(os.path.join(ckpt, "model.safetensors"), how)
    message = _load_error(ckpt)
    assert path in message and PROBLEM_WORDS[how] in message


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_damaged_vision_tower_weights_of_original_layout_are_named(tiny_original, tmp_path, how):
    ckpt = copy_checkpoint(tiny_original, tmp_path / "ckpt")
    path = corrupt(os.path.join(ckpt, CLIP_FOLDER_NAME, "model.safetensors"), how)
    message = _load_error(ckpt)
    assert path in message and PROBLEM_WORDS[how] in message


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_damaged_original_shard_is_named(tiny_original, tmp_path, how):
    ckpt = copy_checkpoint(tiny_original, tmp_path / "ckpt")
    path = corrupt(os.path.join(ckpt, "pytorch_model-00002-of-00002.bin"), how)
    assert path in _load_error(ckpt)


@pytest.mark.parametrize("layout,name", [("hf", "tokenizer.json"), ("original", "tokenizer.model")])
def test_missing_tokenizer_file_is_named(tiny_hf, tiny_original, tmp_path, layout, name):
    ckpt = copy_checkpoint(tiny_hf if layout == "hf" else tiny_original, tmp_path / "ckpt")
    os.remove(os.path.join(ckpt, name))
    message = _load_error(ckpt)
    assert "missing" in message and name in message and "do not belong together" not in message


@pytest.mark.parametrize("layout,name", [("hf", "tokenizer.json"), ("original", "tokenizer.model"),
                                         ("original", "tokenizer_config.json")])
def test_damaged_tokenizer_file_is_named(tiny_hf, tiny_original, tmp_path, layout, name):
    ckpt = copy_checkpoint(tiny_hf if layout == "hf" else tiny_original, tmp_path / "ckpt")
    path = corrupt(os.path.join(ckpt, name), "truncated")
    assert path in _load_error(ckpt)


def test_entry_point_exits_2_with_one_line(tiny_hf, vqa_questions, image_folder, tmp_path, capsys):
    ckpt = copy_checkpoint(tiny_hf, tmp_path / "ckpt")
    path = corrupt(os.path.join(ckpt, "model.safetensors"), "truncated")
    answers = str(tmp_path / "answers.jsonl")
    args = ["--model-path", ckpt, "--question-file", vqa_questions, "--image-folder", image_folder,
            "--answers-file", answers, "--num-workers", "0"]
    with pytest.raises(SystemExit) as exc:  # in process
        model_vqa_loader.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and path in err and "truncated" in err
    # and as a user runs it
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader", *args], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and path in run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("error:")] == [
        line for line in run.stderr.splitlines() if path in line]
