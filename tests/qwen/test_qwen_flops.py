"""The FLOPs geometry of Qwen2.5-VL: dynamic token counts equal to Qwen's processor, windows, parameters equal to
the model's, what a sweep counts and refuses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llava.bench.flops import FlopsError, flops_breakdown, parameter_count, qwen_vision_flops, window_sizes
from llava.bench.geometries import (
    QWEN_2_5_VL_7B,
    geometry_for_checkpoint,
    get_geometry,
    qwen_geometry_for_image,
)
from llava.model.qwen2_5_vl import build_image_processor


@pytest.mark.parametrize("size", [(480, 640), (1080, 1920), (60, 300), (28, 28)])
def test_token_count_per_image_equals_qwens_processor(size):
    geometry = qwen_geometry_for_image(size, max_pixels=28 * 28 * 1280)
    processor = build_image_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    image = Image.fromarray(np.zeros((*size, 3), dtype=np.uint8))
    _, h, w = processor(images=image, return_tensors="pt")["image_grid_thw"][0].tolist()
    assert geometry.grid == (h // 2, w // 2)
    assert geometry.visual_tokens == h * w // 4 and geometry.vision_tokens == h * w


def test_windows_tile_the_merged_grid_from_the_corner():
    assert window_sizes(QWEN_2_5_VL_7B) == [64] * 36  # 24 x 24 merged tokens, windows of 4 x 4 merged = 8 x 8 patches
    cut = QWEN_2_5_VL_7B.replace(merged_grid=(2, 11))
    assert window_sizes(cut) == [32, 32, 24]
    # hand count: 2 x 11 merged = 88 patches, 32 blocks of which 4 full
    n, c, hv = 88, 1280, 3420
    dense = 32 * (8 * n * c * c + 6 * n * c * hv)
    attention = 4 * c * (4 * n * n + 28 * (32 * 32 + 32 * 32 + 24 * 24))
    assert qwen_vision_flops(cut) == pytest.approx(2 * n * 3 * 2 * 14 * 14 * c + dense + attention, rel=1e-12)


def test_parameter_count_equals_the_tiny_models(tiny_qwen, loaded):
    _, model, _ = loaded
    geometry = geometry_for_checkpoint(tiny_qwen)
    counted = parameter_count(geometry)
    assert counted["vision"] == sum(p.numel() for p in model.model.visual.blocks.parameters()) + sum(
        p.numel() for p in model.model.visual.patch_embed.parameters())
    assert counted["projector"] == sum(p.numel() for p in model.model.visual.merger.parameters())
    assert counted["total"] == sum(p.numel() for p in model.parameters())


def test_flops_count_the_merger_on_every_token_and_refuse_what_the_family_refuses():
    geometry = get_geometry("Qwen2.5-VL-7B-Instruct")
    base = flops_breakdown("none", geometry)
    pooled = flops_breakdown("pool", geometry, {"visual_token_num": 64})
    assert base.counts.visual_tokens == 576 and pooled.counts.visual_tokens == 64
    assert pooled.projector == base.projector and pooled.vision == base.vision and pooled.llm < base.llm
    for method in ("fastervlm", "visionzip", "tome"):
        with pytest.raises(FlopsError, match="qwen2.5-vl"):
            flops_breakdown(method, geometry, {"visual_token_num": 64})
    # results files name the checkpoint: the 7B maps to this geometry, a tiny Qwen is never taken for the tiny LLaVA
    assert geometry_for_checkpoint("checkpoints/Qwen2.5-VL-7B-Instruct") is QWEN_2_5_VL_7B
    with pytest.raises(KeyError):
        geometry_for_checkpoint("tiny-qwen2.5-vl")
    larger = qwen_geometry_for_image((1080, 1920), max_pixels=28 * 28 * 1280)
    assert flops_breakdown("none", larger).total > base.total
