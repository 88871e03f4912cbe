"""Tiny random LLaVA models and prompts for the compression tests (CPU, fp32, SDPA everywhere).

The vision tower has CLIP-L/336's geometry where it matters (336 px, patch 14 -> 24x24 = 576 patches + [CLS],
24 layers so that layer indices 20..23 exist, ``vision_feature_layer=-2`` -> feature layer 22) but is very thin
(width 64, 4 heads). Its q/k weights are scaled up so [CLS] attention is peaked, not flat (platform pitfall 13);
the text model uses ``initializer_range=0.3`` so greedy generation is not degenerate.
"""

from __future__ import annotations

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from llava.eval.inference import left_pad as left_pad_ids
from llava.model.configs import clip_vision_config, llama_text_config, llava_config
from llava.model.tiny import sharpen_attention

IMAGE_TOKEN_ID = 299
PAD_TOKEN_ID = 0
NUM_PATCHES = 576
QK_SCALE = 4.0


def tiny_llava_config() -> LlavaConfig:
    vision = clip_vision_config(hidden=64, intermediate=128, layers=24, heads=4, image_size=336, patch_size=14,
                                projection_dim=512)
    text = llama_text_config(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab_size=300,
                             pad_token_id=PAD_TOKEN_ID, init_range=0.3, max_positions=2048, rms_norm_eps=1e-6)
    return llava_config(vision, text, image_token_id=IMAGE_TOKEN_ID)


def build_tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    """A seeded tiny LLaVA: the same seed gives bit-identical weights."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(
        tiny_llava_config(), attn_implementation="sdpa", dtype=torch.float32
    )
    sharpen_attention(model.model.vision_tower, QK_SCALE)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    return model.eval()


def make_pixels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 336, 336, generator=g)


def make_prompts(with_image: list[bool], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts, one row per entry: text, a 576-token ``<image>`` run (if True), text."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, img in enumerate(with_image):
        pre = torch.randint(1, IMAGE_TOKEN_ID, (3 + i,), generator=g)
        post = torch.randint(1, IMAGE_TOKEN_ID, (5 + 2 * i,), generator=g)
        run = torch.full((NUM_PATCHES if img else 0,), IMAGE_TOKEN_ID)
        rows.append(torch.cat([pre, run, post]))
    return left_pad_ids([r.tolist() for r in rows], PAD_TOKEN_ID, torch.device("cpu"))
