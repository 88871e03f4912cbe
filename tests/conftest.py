"""Shared fixtures: tiny checkpoints of both layouts and a few generated images (built once per session)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image, ImageDraw

from llava.model.tiny import write_hf_layout, write_original_layout


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread pool's
    barriers turn thousands of tiny ops into long stalls. Subprocesses get OMP_NUM_THREADS=1 likewise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(previous)


IMAGE_SIZES = [(500, 333), (301, 640), (336, 336), (640, 480), (120, 90), (333, 500)]


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> str:
    return write_hf_layout(str(tmp_path_factory.mktemp("ckpt") / "tiny-llava-hf"), seed=0)


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory) -> str:
    return write_original_layout(str(tmp_path_factory.mktemp("ckpt") / "tiny-llava-original"), seed=0)


@pytest.fixture(scope="session")
def tiny_next_hf(tmp_path_factory) -> str:
    """Tiny LLaVA-NeXT (LLaVA-1.6) checkpoint in the llava-hf layout (``llava-v1.6-vicuna-*-hf``)."""
    return write_hf_layout(str(tmp_path_factory.mktemp("ckpt") / "tiny-llava-next-hf"), seed=0, family="llava-next")


@pytest.fixture(scope="session")
def tiny_next_original(tmp_path_factory) -> str:
    """The same weights in the original ``liuhaotian/llava-v1.6-vicuna-*`` layout."""
    return write_original_layout(str(tmp_path_factory.mktemp("ckpt") / "tiny-llava-next-original"), seed=0,
                                 family="llava-next")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("images")
    for i, (w, h) in enumerate(IMAGE_SIZES):
        img = Image.new("RGB", (w, h), (40 * i % 256, 120, 200 - 30 * i))
        draw = ImageDraw.Draw(img)
        draw.ellipse((w // 8, h // 8, w // 2, h // 2), fill=(230, 20, 20))
        draw.rectangle((w // 2, h // 2, w - 5, h - 5), fill=(20, 200, 40 + 20 * i))
        img.save(folder / f"img{i}.png")
    return str(folder)


def write_vqa_questions(path: str, n: int, missing_image_at: int | None = None) -> str:
    """A POPE/GQA-style JSON-lines question file over the session's images."""
    with open(path, "w") as f:
        for i in range(n):
            image = "missing.png" if i == missing_image_at else f"img{i % len(IMAGE_SIZES)}.png"
            text = ["Is there a red circle in the image?", "What color is the rectangle?",
                    "How many shapes are there?"][i % 3]
            f.write(json.dumps({"question_id": 100 + i, "image": image,
                                "text": text + "\nAnswer the question using a single word or phrase.",
                                "category": "default"}) + "\n")
    return path


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def vqa_questions(tmp_path) -> str:
    return write_vqa_questions(os.path.join(tmp_path, "questions.jsonl"), 6)
