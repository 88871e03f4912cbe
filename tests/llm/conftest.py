"""Tiny LLaVA models and prompts for the in-LLM pruning tests (CPU, fp32, SDPA unless a test asks for eager).

The vision tower is a stub: image features are fed through ``mm_encoder_outputs`` (as the evaluation path does),
so only the decoder matters. It is small but has the properties the engine cares about: GQA (4 query heads, 2 KV
heads), several layers, and ``initializer_range=0.3`` so greedy decoding is not degenerate (platform pitfall 13).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.compression.registry import ModelGeometry
from llava.eval.inference import left_pad as left_pad_ids
from llava.model.configs import clip_vision_config, llama_text_config
from llava.model.configs import llava_config as build_llava_config

IMAGE_TOKEN_ID = 299
PAD_TOKEN_ID = 0
HIDDEN = 64
NUM_VISUAL = 36  # = the stub tower's patch count (84 px / 14)
NUM_LAYERS = 4


def llava_config(num_layers: int = NUM_LAYERS) -> LlavaConfig:
    vision = clip_vision_config(hidden=32, intermediate=64, layers=1, heads=2, image_size=84, patch_size=14,
                                projection_dim=512)
    text = llama_text_config(hidden=HIDDEN, intermediate=128, layers=num_layers, heads=4, kv_heads=2, vocab_size=300,
                             pad_token_id=PAD_TOKEN_ID, init_range=0.3, max_positions=512, rms_norm_eps=1e-6)
    return build_llava_config(vision, text, image_token_id=IMAGE_TOKEN_ID)


def build_llava(seed: int = 0, num_layers: int = NUM_LAYERS, attn: str = "sdpa") -> LlavaForConditionalGeneration:
    """A seeded tiny LLaVA: the same seed gives bit-identical weights."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(
        llava_config(num_layers), attn_implementation=attn, dtype=torch.float32
    )
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None  # fixed-length greedy outputs, comparable token by token
    model.generation_config.suppress_tokens = [IMAGE_TOKEN_ID]  # as the evaluation path does
    return model.eval()


def eager_copy(model: LlavaForConditionalGeneration) -> LlavaForConditionalGeneration:
    """The same weights with eager attention everywhere (for attention-weight checks only)."""
    eager = build_llava(num_layers=model.config.text_config.num_hidden_layers, attn="eager")
    eager.load_state_dict(model.state_dict())
    return eager


def geometry(num_layers: int = NUM_LAYERS) -> ModelGeometry:
    return ModelGeometry(num_patches=NUM_VISUAL, grid=(6, 6), vision_layers=1, llm_layers=num_layers)


def make_rows(specs: list[tuple[int, bool, int]], seed: int = 0, n_visual: int = NUM_VISUAL) -> list[torch.Tensor]:
    """One id row per ``(text before, has image, text after)``: text, a run of image tokens, text."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for pre, img, post in specs:
        parts = [torch.randint(1, IMAGE_TOKEN_ID, (pre,), generator=g)]
        if img:
            parts.append(torch.full((n_visual,), IMAGE_TOKEN_ID))
        parts.append(torch.randint(1, IMAGE_TOKEN_ID, (post,), generator=g))
        rows.append(torch.cat(parts))
    return rows


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad_ids([r.tolist() for r in rows], PAD_TOKEN_ID, torch.device("cpu"))


def make_features(n_images: int, seed: int = 1, n_visual: int = NUM_VISUAL) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_visual, HIDDEN, generator=g) for _ in range(n_images)]


def mm(features: list[torch.Tensor]) -> dict:
    return {"image": BaseModelOutputWithPooling(pooler_output=list(features))} if features else {}


def batch(specs: list[tuple[int, bool, int]], seed: int = 0):
    """``(input_ids, attention_mask, mm_encoder_outputs kwargs)`` for left-padded rows; features per image row."""
    rows = make_rows(specs, seed)
    ids, mask = left_pad(rows)
    feats = make_features(sum(1 for _, img, _ in specs if img), seed + 1)
    kw = {"mm_encoder_outputs": mm(feats)} if feats else {}
    return ids, mask, kw, feats


def greedy_generate(model, ids, mask, kw, n: int) -> torch.Tensor:
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, **kw)
    return out[:, ids.shape[1] :]


@pytest.fixture(scope="session")
def shared_model() -> LlavaForConditionalGeneration:
    return build_llava(0)


@pytest.fixture
def model(shared_model):
    """The shared tiny model, guaranteed unmodified before and after the test."""
    import llava.compression as vtc

    vtc.remove(shared_model)
    yield shared_model
    vtc.remove(shared_model)




# -- the tiny LLaVA-1.5 checkpoint (llava.model.tiny: CLIP geometry, 576 patches, 4 Llama layers), in process --------


@pytest.fixture(scope="session")
def shared_checkpoint_model() -> LlavaForConditionalGeneration:
    from llava.model.tiny import build_llava_config, build_tiny_state_dict

    config = build_llava_config()
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.load_state_dict(build_tiny_state_dict(0))
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = None  # fixed-length greedy outputs, comparable token by token
    return model.eval()


@pytest.fixture
def checkpoint_model(shared_checkpoint_model):
    """The tiny checkpoint's model, guaranteed unmodified before and after the test."""
    import llava.compression as vtc

    vtc.remove(shared_checkpoint_model)
    yield shared_checkpoint_model
    vtc.remove(shared_checkpoint_model)


def checkpoint_inputs(model: LlavaForConditionalGeneration, batch_size: int, seed: int = 0) -> dict:
    """``input_ids`` / ``attention_mask`` / ``pixel_values`` of ``batch_size`` prompts (text, one 576-token image
    run, text) of different lengths, left-padded."""
    g = torch.Generator().manual_seed(seed)
    image_id, pad_id = model.config.image_token_id, model.generation_config.pad_token_id
    rows = []
    for i in range(batch_size):
        pre = torch.randint(5, image_id, (3 + 2 * i,), generator=g)
        post = torch.randint(5, image_id, (6 + 3 * i,), generator=g)
        rows.append(torch.cat([pre, torch.full((576,), image_id), post]))
    ids, mask = left_pad_ids([r.tolist() for r in rows], pad_id, torch.device("cpu"))
    size = model.config.vision_config.image_size
    pixels = torch.randn(batch_size, 3, size, size, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
