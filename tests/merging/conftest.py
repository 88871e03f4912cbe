"""Tiny LLaVA models for the merging tests (CPU, fp32, SDPA unless a test asks for eager).

The vision tower is a real CLIP, kept small so the in-encoder methods run fast: 112 px / patch 14 = an 8x8 grid of
64 patches + [CLS], 8 layers (``vision_feature_layer=-2`` -> feature layer 6), width 32, 2 heads, q/k scaled up so
attention is peaked (platform pitfall 13). The LLM is a 4-layer Llama with GQA and ``initializer_range=0.3`` so
greedy decoding is not degenerate.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

import llava.compression as vtc
from llava.eval.inference import left_pad as left_pad_ids
from llava.model.configs import clip_vision_config, llama_text_config
from llava.model.configs import llava_config as build_llava_config
from llava.model.tiny import sharpen_attention

IMAGE_TOKEN_ID = 299
PAD_TOKEN_ID = 0
NUM_PATCHES = 64
GRID = (8, 8)
VISION_LAYERS = 8
FEATURE_LAYER = 6
LLM_LAYERS = 4
QK_SCALE = 4.0
# the image placeholder id is never generated (it would count as one more image token in a recomputation)
GEN = {"max_new_tokens": 5, "do_sample": False, "suppress_tokens": [IMAGE_TOKEN_ID]}


def llava_config() -> LlavaConfig:
    vision = clip_vision_config(hidden=32, intermediate=64, layers=VISION_LAYERS, heads=2, image_size=112, patch_size=14,
                                projection_dim=512)
    text = llama_text_config(hidden=64, intermediate=128, layers=LLM_LAYERS, heads=4, kv_heads=2, vocab_size=300,
                             pad_token_id=PAD_TOKEN_ID, init_range=0.3, max_positions=512, rms_norm_eps=1e-6)
    return build_llava_config(vision, text, image_token_id=IMAGE_TOKEN_ID)


def build_model(seed: int = 0, attn: str = "sdpa") -> LlavaForConditionalGeneration:
    """A seeded tiny LLaVA: the same seed gives bit-identical weights."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(
        llava_config(), attn_implementation=attn, dtype=torch.float32
    )
    sharpen_attention(model.model.vision_tower, QK_SCALE)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None  # fixed-length greedy outputs, comparable token by token
    return model.eval()


def make_pixels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 112, 112, generator=g)


def make_prompts(specs: list[tuple[int, bool, int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts, one row per ``(text before, has image, text after)``; an image is 64 ``<image>`` ids."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for pre, img, post in specs:
        parts = [torch.randint(1, IMAGE_TOKEN_ID, (pre,), generator=g)]
        if img:
            parts.append(torch.full((NUM_PATCHES,), IMAGE_TOKEN_ID))
        parts.append(torch.randint(1, IMAGE_TOKEN_ID, (post,), generator=g))
        rows.append(torch.cat(parts))
    return left_pad_ids([r.tolist() for r in rows], PAD_TOKEN_ID, torch.device("cpu"))


@pytest.fixture(scope="session")
def shared_model() -> LlavaForConditionalGeneration:
    return build_model(0)


@pytest.fixture
def model(shared_model):
    """The shared tiny model, guaranteed unmodified before and after the test."""
    vtc.remove(shared_model)
    yield shared_model
    vtc.remove(shared_model)


