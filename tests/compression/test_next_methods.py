"""Compression methods on LLaVA-NeXT (LLaVA-1.6): pre-LLM methods per crop in both grid modes, the newline rule,
in-LLM methods on the full sequence, the budget error and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import llava.compression as compression
from llava.compression.families import llava_next
from llava.compression.families.anyres import ANYRES, FIXED_672, crop_grid, unpadded_grid
from llava.compression.registry import CompressionConfigError
from llava.model.builder import load_pretrained_model

# (width, height): wide, tall, near-square
ASPECTS = [(500, 333), (301, 640), (900, 860)]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 7 + height)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def anyres_model(tiny_next_hf):
    return load_pretrained_model(tiny_next_hf, device="cpu")


@pytest.fixture(scope="module")
def fixed_model(tiny_next_hf):
    return load_pretrained_model(tiny_next_hf, device="cpu", next_grid=FIXED_672)


@pytest.fixture(autouse=True)
def no_method_left(anyres_model, fixed_model):
    yield
    compression.apply(anyres_model[1], "none")
    compression.apply(fixed_model[1], "none")


def packed(model, processor, images) -> list[torch.Tensor]:
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    return list(out.pooler_output)


def prompt_batch(tokenizer, model, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt per image with ``counts[i]`` placeholders, left-padded."""
    head = tokenizer("A chat. USER:", add_special_tokens=True).input_ids
    tail = tokenizer("What is it? ASSISTANT:").input_ids[1:]
    rows = [head + [model.config.image_token_id] * c + tail for c in counts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def generate(loaded, images, counts) -> torch.Tensor:
    tokenizer, model, processor, _ = loaded
    inputs = processor(images=images, return_tensors="pt")
    ids, mask = prompt_batch(tokenizer, model, counts)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                              image_sizes=inputs["image_sizes"], max_new_tokens=4, do_sample=False, pad_token_id=0)


def logits(loaded, image, counts) -> torch.Tensor:
    """Teacher-forced logits of the last position, through the applied method (if any)."""
    tokenizer, model, processor, _ = loaded
    inputs = processor(images=[image], return_tensors="pt")
    ids, mask = prompt_batch(tokenizer, model, counts)
    with torch.no_grad():
        if llava_next._state_of(model) is None:
            return model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                         image_sizes=inputs["image_sizes"]).logits[:, -1]
        prepared = llava_next.prepare_multimodal_inputs(model, ids, mask, inputs["pixel_values"],
                                                        inputs["image_sizes"], pad_token_id=0)
        return model(input_ids=prepared["input_ids"], attention_mask=prepared["attention_mask"],
                     mm_encoder_outputs=prepared["mm_encoder_outputs"]).logits[:, -1]


def merged_map_positions(model, image_size, mode) -> tuple[int, int, int, int, int, int, int]:
    crop = model.config.vision_config.image_size
    side = crop // model.config.vision_config.patch_size
    rows, cols = crop_grid(image_size, model.config.image_grid_pinpoints, crop)
    height, width = rows * side, cols * side
    if mode == ANYRES:
        height, width = unpadded_grid(image_size, rows * side, cols * side)
    return side, rows, cols, height, width, (rows * side - height) // 2, (cols * side - width) // 2


def kept_map(model, image_size, mode, crop_traces) -> torch.Tensor:
    """``[height, width]`` bool: which positions of the (unpadded) merged grid-crop map hold a kept token."""
    side, rows, cols, height, width, top, left = merged_map_positions(model, image_size, mode)
    keep = torch.zeros(rows * side, cols * side, dtype=torch.bool)
    for c, trace in enumerate(crop_traces[1:]):
        for p in trace["kept_indices"]:
            keep[(c // cols) * side + p // side, (c % cols) * side + p % side] = True
    return keep[top : top + height, left : left + width]


# -- keep-all == no method ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fastervlm", "tome"])
@pytest.mark.parametrize("mode", [ANYRES, FIXED_672])
def test_keep_all_equals_no_method_bit_for_bit(anyres_model, fixed_model, mode, method):
    loaded = anyres_model if mode == ANYRES else fixed_model
    model, processor = loaded[1], loaded[2]
    images = [picture(w, h) for w, h in ASPECTS]
    reference = packed(model, processor, images)
    counts = [int(f.shape[0]) for f in reference]
    ref_logits = logits(loaded, images[0], counts[:1])
    ref_answers = generate(loaded, images, counts)
    compression.apply(model, method, visual_token_num=576)
    kept = packed(model, processor, images)
    assert [int(f.shape[0]) for f in kept] == counts
    for a, b in zip(kept, reference):
        assert torch.equal(a, b)
    assert torch.equal(logits(loaded, images[0], counts[:1]), ref_logits)
    assert torch.equal(generate(loaded, images, counts), ref_answers)


# -- per-crop budget, raster order, newline rule -------------------------------------------------------------------


def test_fixed_grid_fastervlm_keeps_T_per_crop_in_raster_order(fixed_model):
    """FasterVLM's setting: 5 crops x T; each crop's kept patches ascending; the LLM sees the base crop's kept
    tokens, then the grid crops' kept tokens exactly where they stand in the unpruned row-major merged map."""
    _, model, processor, _ = fixed_model
    image = picture(*ASPECTS[0])
    size = (ASPECTS[0][1], ASPECTS[0][0])
    (reference,) = packed(model, processor, [image])
    assert reference.shape[0] == 5 * 576
    compression.apply(model, "fastervlm", visual_token_num=29)
    (kept,) = packed(model, processor, [image])
    (trace,) = compression.last_trace(model)
    assert kept.shape[0] == trace["visual_tokens"] == 5 * 29
    assert [c["visual_tokens"] for c in trace["crops"]] == [29] * 5
    for crop in trace["crops"]:
        assert crop["kept_indices"] == sorted(crop["kept_indices"])
    base_kept = torch.tensor(trace["crops"][0]["kept_indices"])
    assert torch.equal(kept[:29], reference[:576][base_kept])
    keep = kept_map(model, size, FIXED_672, trace["crops"]).reshape(-1)
    assert torch.equal(kept[29:], reference[576:][keep])


def test_anyres_keeps_place_and_drops_newline_of_empty_rows(anyres_model):
    """Kept tokens stay in the unpadded map's raster order; a row with no kept token loses its newline, every other
    row keeps exactly one after its tokens."""
    _, model, processor, _ = anyres_model
    width, height = ASPECTS[0]
    image = picture(width, height)
    (reference,) = packed(model, processor, [image])
    compression.apply(model, "fastervlm", visual_token_num=8)
    (kept,) = packed(model, processor, [image])
    (trace,) = compression.last_trace(model)
    keep = kept_map(model, (height, width), ANYRES, trace["crops"])
    _, _, _, map_height, map_width, _, _ = merged_map_positions(model, (height, width), ANYRES)
    grid_reference = reference[576:].reshape(map_height, map_width + 1, -1)  # each row: tokens + newline
    expected = [reference[:576][torch.tensor(trace["crops"][0]["kept_indices"])]]
    for r in range(map_height):
        if keep[r].any():
            expected.extend((grid_reference[r, :map_width][keep[r]], grid_reference[r, map_width:]))
    assert 0 < int(keep.any(dim=1).sum()) < map_height  # some rows emptied, some kept
    assert torch.equal(kept, torch.cat(expected))
    assert trace["visual_tokens"] == kept.shape[0] == 8 + int(keep.sum()) + int(keep.any(dim=1).sum())


# -- batches ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [ANYRES, FIXED_672])
def test_batch_of_three_aspect_ratios_equals_three_single_runs(anyres_model, fixed_model, mode):
    loaded = anyres_model if mode == ANYRES else fixed_model
    model, processor = loaded[1], loaded[2]
    images = [picture(w, h) for w, h in ASPECTS]
    compression.apply(model, "fastervlm", visual_token_num=16)
    batch = packed(model, processor, images)
    batch_traces = compression.last_trace(model)
    singles = [packed(model, processor, [image])[0] for image in images]
    for a, b in zip(batch, singles):
        torch.testing.assert_close(a, b)
    counts = [int(f.shape[0]) for f in batch]
    # placeholder counts are the unpruned ones; generate shrinks them to the packed counts
    full_counts = [int(f.shape[0]) for f in (compression.apply(model, "none") and packed(model, processor, images))]
    compression.apply(model, "fastervlm", visual_token_num=16)
    answers = generate(loaded, images, full_counts)
    traces = compression.last_trace(model)
    single_answers = [generate(loaded, [image], [c]) for image, c in zip(images, full_counts)]
    new = answers[:, -4:]
    for i, single in enumerate(single_answers):
        assert torch.equal(new[i], single[0, -4:])
    assert [t["visual_tokens"] for t in traces] == counts == [t["visual_tokens"] for t in batch_traces]
    assert [t["row"] for t in traces] == [0, 1, 2]


# -- other methods ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, options", [("vtc-cls", {"visual_token_num": 12}),
                                             ("prumerge+", {}), ("visionzip", {"visual_token_num": 20})])
def test_cls_methods_run_per_crop(anyres_model, method, options):
    """[CLS] methods work per crop (CLIP has [CLS]); the answer runs end to end with the shrunk prompt."""
    tokenizer, model, processor, _ = anyres_model
    image = picture(*ASPECTS[1])
    (full,) = packed(model, processor, [image])
    compression.apply(model, method, **options)
    out = generate(anyres_model, [image], [int(full.shape[0])])
    (trace,) = compression.last_trace(model)
    assert len(trace["crops"]) == 1 + 2  # a tall image: base + 2 x 1 grid on the tiny checkpoint's pinpoints
    assert 0 < trace["visual_tokens"] < full.shape[0]
    if "visual_token_num" in options:
        assert all(c["visual_tokens"] == options["visual_token_num"] for c in trace["crops"])
    assert out.shape[1] > 0


def test_in_llm_fastv_keep_all_equals_no_method_and_prunes(anyres_model):
    images = [picture(w, h) for w, h in ASPECTS[:2]]
    model, processor = anyres_model[1], anyres_model[2]
    counts = [int(f.shape[0]) for f in packed(model, processor, images)]
    reference = generate(anyres_model, images, counts)
    compression.apply(model, "fastv", fastv_k=1, fastv_r=0.0)
    assert torch.equal(generate(anyres_model, images, counts), reference)
    compression.apply(model, "fastv", fastv_k=1, fastv_r=0.5)
    out = generate(anyres_model, images, counts)
    traces = compression.last_trace(model)
    assert out.shape[0] == 2 and traces is not None and len(traces) == 2
    assert compression.applied_config(model).name == "fastv"


def test_budget_larger_than_a_crop_is_one_clear_error(anyres_model):
    with pytest.raises(CompressionConfigError, match="576"):
        compression.apply(anyres_model[1], "fastervlm", visual_token_num=577)
    assert compression.applied_config(anyres_model[1]).name == "none"


def test_in_encoder_plus_llm_method_is_refused_naming_the_stages(anyres_model):
    with pytest.raises(CompressionConfigError, match="'ficoco-vl' acts at stages.*in-encoder merging runs alone"):
        compression.apply(anyres_model[1], "ficoco-vl")


@pytest.mark.parametrize("method", ["tome", "ficoco-v"])
@pytest.mark.parametrize("mode", [ANYRES, FIXED_672])
def test_in_encoder_methods_merge_per_crop_and_batch_like_singles(anyres_model, fixed_model, mode, method):
    loaded = anyres_model if mode == ANYRES else fixed_model
    model, processor = loaded[1], loaded[2]
    images = [picture(w, h) for w, h in ASPECTS]
    full_counts = [int(f.shape[0]) for f in packed(model, processor, images)]
    compression.apply(model, method, visual_token_num=64)
    batch = packed(model, processor, images)
    traces = compression.last_trace(model)
    for image, features, trace in zip(images, batch, traces):
        assert all(c["visual_tokens"] == 64 for c in trace["crops"])
        assert features.shape[0] == trace["visual_tokens"]
        if mode == FIXED_672:
            assert trace["visual_tokens"] == 64 * len(trace["crops"])
        torch.testing.assert_close(packed(model, processor, [image])[0], features)
    answers = generate(loaded, images, full_counts)
    assert answers.shape[0] == 3


# -- global budget -----------------------------------------------------------------------------------------------------


def test_global_budget_keeps_the_top_scores_over_all_crops(fixed_model):
    """``budget_mode="global"``: T x 5 tokens per image, the highest [CLS] scores over all five crops (every kept
    score >= every dropped one); crops keep different counts; keep-all still equals no method."""
    from llava.compression.families.llava import tower_signals
    from llava.compression.methods.fastervlm import cls_patch_scores

    _, model, processor, _ = fixed_model
    width, height = ASPECTS[0]
    image = picture(width, height)
    (reference,) = packed(model, processor, [image])
    compression.apply(model, "fastervlm", visual_token_num=576, budget_mode="global")
    assert torch.equal(packed(model, processor, [image])[0], reference)
    compression.apply(model, "fastervlm", visual_token_num=20, budget_mode="global")
    (kept,) = packed(model, processor, [image])
    (trace,) = compression.last_trace(model)
    per_crop = [c["visual_tokens"] for c in trace["crops"]]
    assert kept.shape[0] == sum(per_crop) == 5 * 20 and len(set(per_crop)) > 1
    config = compression.applied_config(model)
    geometry = llava_next.model_geometry(model)
    inputs = processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        signals, _ = tower_signals(model.model.vision_tower, inputs["pixel_values"][0], config.probe_layers(geometry),
                                   geometry, model.model.multi_modal_projector)
    scores = cls_patch_scores(signals, signals.feature_layer, config.head_reduction)
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    for c, crop in enumerate(trace["crops"]):
        chosen[c, crop["kept_indices"]] = True
    assert scores[chosen].min() >= scores[~chosen].max()
    # packing as per crop: base crop's kept tokens, then the grid crops' in the merged map's raster order
    keep = kept_map(model, (height, width), FIXED_672, trace["crops"]).reshape(-1)
    assert torch.equal(kept[per_crop[0]:], reference[576:][keep])


def test_global_budget_is_refused_for_other_methods_and_unknown_modes(anyres_model):
    with pytest.raises(CompressionConfigError, match="global is implemented for fastervlm only"):
        compression.apply(anyres_model[1], "vtc-cls", visual_token_num=8, budget_mode="global")
    with pytest.raises(CompressionConfigError, match="budget_mode must be one of per-crop, global"):
        compression.apply(anyres_model[1], "fastervlm", visual_token_num=8, budget_mode="per-video")


def test_describe_records_grid_and_budget_mode(fixed_model):
    from llava.compression.families import family_for

    model = fixed_model[1]
    compression.apply(model, "fastervlm", visual_token_num=16, budget_mode="global")
    described = family_for(model).describe(model)
    assert (described["method"], described["grid_mode"], described["budget_mode"]) == ("fastervlm", FIXED_672, "global")
    assert described["method_args"]["visual_token_num"] == 16
