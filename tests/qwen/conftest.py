"""The tiny Qwen2.5-VL checkpoint (written once per session, loaded through the project's builder), three images of
different sizes, batched prompts, and the attention guard (SDPA only, no square attention matrix anywhere)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from llava.compression.families import qwen2_5_vl as family
from llava.model.qwen2_5_vl import IMAGE_TOKEN, build_prompt

# (height, width): merged grids 2x11 (22 tokens), 8x8 (64), 4x5 (20) at the tiny processor's pixel range
IMAGE_SIZES = [(60, 300), (224, 224), (100, 150)]
QUESTIONS = [
    "<image>\nWhat is the color of the car? Answer the question using a single word or phrase.",
    "<image>\nIs there a dog in the image? Please answer yes or no.",
    "<image>\nDescribe this image in detail.",
]


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> str:
    from llava.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2.5-vl"), family="qwen2.5-vl")


@pytest.fixture(scope="session")
def loaded(tiny_qwen):
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(tiny_qwen, device="cpu")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: always decode the full length
    return tokenizer, model, processor


@pytest.fixture
def qwen(loaded):
    """``(tokenizer, model, processor)`` with nothing applied before and after the test."""
    tokenizer, model, processor = loaded
    family.remove(model)
    yield tokenizer, model, processor
    family.remove(model)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for h, w in IMAGE_SIZES]


def make_batch(tokenizer, processor, images, indices, questions=QUESTIONS):
    """Left-padded prompts (Qwen's chat format, one image each, its placeholder run expanded to its merged token
    count) with the processor's ``pixel_values`` / ``image_grid_thw`` / ``mm_token_type_ids``."""
    encoded = processor(images=[images[i] for i in indices], return_tensors="pt")
    grid = encoded["image_grid_thw"]
    rows = []
    for j, i in enumerate(indices):
        prompt = build_prompt(questions[i]).replace(IMAGE_TOKEN, IMAGE_TOKEN * int(grid[j].prod() // 4))
        rows.append(tokenizer(prompt).input_ids)
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, length - len(row):] = torch.tensor(row)
        mask[r, length - len(row):] = 1
    types = (ids == processor_image_id(tokenizer)).int()
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": encoded["pixel_values"],
            "image_grid_thw": grid, "mm_token_type_ids": types}


def processor_image_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def greedy(model, batch, n: int = 6, **kwargs):
    out = model.generate(**batch, max_new_tokens=n, do_sample=False, **kwargs)
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    return sequences[:, batch["input_ids"].shape[1]:]


@contextlib.contextmanager
def attention_guard(model, threshold: int = 60, allow_method_maps: bool = False):
    """The project's attention guard (:func:`llava.bench.latency.attention_guard`, strict: eager attention of the
    vision tower or the decoder, or attention weights returned, fail the test) with SDPA checked on both towers, and
    no softmax over a ``[.., n, m]`` block with ``n, m >= threshold`` (a full attention map of the decoder, whose
    prompts here hold 60+ tokens, or of a full-attention vision block) at the end, unless ``allow_method_maps`` (a
    method that builds its own attention rows by design: FiCoCo-L scores every visual row from q/k)."""
    from llava.bench.latency import attention_guard as guard

    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "sdpa"
    with guard(model, threshold, strict=True) as report:
        yield report
    assert report.eager_calls == 0 and report.returned_weights == 0
    assert allow_method_maps or not report.square_maps, f"attention maps were materialised: {report.square_maps}"
