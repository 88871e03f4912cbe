"""LLaVA-NeXT (LLaVA-1.6) loading: both checkpoint layouts, anyres preprocessing and token counts, the fixed grid."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from llava.compression.families.anyres import (
    ANYRES,
    FIXED_672,
    GridModeError,
    crop_grid,
    image_token_count,
    unpadded_grid,
)
from llava.model.builder import load_pretrained_model
from llava.model.checkpoint import CheckpointError, checkpoint_kind
from llava.model.configs import LLAVA_NEXT_GRID_PINPOINTS

# (width, height) of images with several aspect ratios; none is a small square (see the tie test below)
ASPECTS = [(500, 333), (301, 640), (640, 480), (1200, 300), (200, 900), (900, 860)]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 7 + height)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def next_hf(tiny_next_hf):
    return load_pretrained_model(tiny_next_hf, device="cpu")


@pytest.fixture(scope="module")
def next_original(tiny_next_original):
    return load_pretrained_model(tiny_next_original, device="cpu")


def packed_lengths(model, processor, images) -> list[int]:
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    return [int(f.shape[0]) for f in out.pooler_output]


def logits_of(loaded, image: Image.Image) -> torch.Tensor:
    tokenizer, model, processor, _ = loaded
    inputs = processor(images=[image], return_tensors="pt")
    (count,) = packed_lengths(model, processor, [image])
    prompt = tokenizer("A chat. USER:", add_special_tokens=True).input_ids
    ids = torch.tensor([prompt + [model.config.image_token_id] * count + tokenizer("What is it? ASSISTANT:").input_ids[1:]])
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]).logits


# -- loading ----------------------------------------------------------------------------------------------------------


def test_checkpoint_kind_recognises_llava_next_in_both_layouts(tiny_next_hf, tiny_next_original, tiny_hf, tiny_original):
    def kind(folder):
        with open(os.path.join(folder, "config.json")) as f:
            return checkpoint_kind(json.load(f))

    assert kind(tiny_next_hf) == ("llava_next", "hf")
    assert kind(tiny_next_original) == ("llava_next", "original")
    assert kind(tiny_hf) == ("llava", "hf")  # LLaVA-1.5 unchanged
    assert kind(tiny_original) == ("llava", "original")


def test_both_layouts_load_llava_next_with_identical_logits(next_hf, next_original):
    from transformers import LlavaNextForConditionalGeneration

    from llava.model.sentencepiece_tokenizer import LlamaSentencePieceTokenizer

    for loaded, layout in ((next_hf, "hf"), (next_original, "original")):
        model = loaded[1]
        assert isinstance(model, LlavaNextForConditionalGeneration)
        assert (model.llava_load_info.family, model.llava_load_info.layout) == ("llava_next", layout)
    # the original layout's tokenizer goes through LLaVA-1.5's SentencePiece path
    assert isinstance(next_original[0], LlamaSentencePieceTokenizer)
    # the original checkpoint's fine-tuned tower (inside the checkpoint), not the CLIP folder's, is loaded
    hf_state, original_state = next_hf[1].state_dict(), next_original[1].state_dict()
    assert set(hf_state) == set(original_state)
    for key in hf_state:
        assert torch.equal(hf_state[key], original_state[key]), key
    for width, height in ASPECTS[:3]:
        image = picture(width, height)
        torch.testing.assert_close(logits_of(next_hf, image), logits_of(next_original, image), rtol=0, atol=0)


def test_original_next_config_with_another_merge_type_or_llm_is_refused(tiny_next_original, tmp_path):
    import shutil

    folder = tmp_path / "spatial"
    shutil.copytree(tiny_next_original, folder)
    config = json.loads((folder / "config.json").read_text())
    config["mm_patch_merge_type"] = "spatial"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mm_patch_merge_type='spatial' is not supported.*fixed-672"):
        load_pretrained_model(str(folder), device="cpu")
    config.update(mm_patch_merge_type="spatial_unpad", architectures=["LlavaMistralForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="LlavaMistralForCausalLM.*not supported.*llava-v1.6-mistral-7b-hf"):
        load_pretrained_model(str(folder), device="cpu")


def test_next_grid_is_refused_on_llava_15_and_unknown_modes(tiny_hf, tiny_next_hf):
    with pytest.raises(CheckpointError, match="LLaVA-NeXT checkpoints only"):
        load_pretrained_model(tiny_hf, device="cpu", next_grid=FIXED_672)
    with pytest.raises(GridModeError, match="unknown LLaVA-NeXT grid mode 'fixed-336'"):
        load_pretrained_model(tiny_next_hf, device="cpu", next_grid="fixed-336")


# -- anyres token counts ------------------------------------------------------------------------------------------


def test_anyres_token_count_equals_transformers_processor_and_the_model(next_hf):
    """Our count == ``LlavaNextProcessor``'s placeholder count == the rows the model packs, per aspect ratio."""
    from transformers import LlavaNextProcessor

    tokenizer, model, image_processor, _ = next_hf
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    images = [picture(w, h) for w, h in ASPECTS]
    ours = [image_token_count((h, w), pinpoints=model.config.image_grid_pinpoints, crop_size=336, patch_size=14)
            for w, h in ASPECTS]
    theirs = []
    for image in images:
        ids = processor(images=[image], text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt").input_ids
        theirs.append(int((ids == model.config.image_token_id).sum()))
    assert ours == theirs
    assert packed_lengths(model, image_processor, images) == ours  # one batch of six images of different grids
    assert len(set(ours)) > 3  # the count really depends on the aspect ratio


def test_anyres_token_count_by_hand_on_llava_16_7b_geometry():
    pins = LLAVA_NEXT_GRID_PINPOINTS
    # 500 x 333 (w x h): grid 1 x 2 -> a 24 x 48 map; unpadded width round(500 * 24 / 333) = 36 -> 24 x 36 + 24 rows
    assert crop_grid((333, 500), pins, 336) == (1, 2)
    assert unpadded_grid((333, 500), 24, 48) == (24, 36)
    assert image_token_count((333, 500), pinpoints=pins, crop_size=336, patch_size=14) == 576 + 24 * 36 + 24
    # a large square image: the 2 x 2 grid, nothing to unpad: 576 + 48 * 48 + 48 newlines
    assert image_token_count((1000, 1000), pinpoints=pins, crop_size=336, patch_size=14) == 576 + 48 * 48 + 48
    # FasterVLM's fixed grid: 5 x 576 = 2880 for every image
    for size in [(333, 500), (1000, 1000), (300, 1200), (900, 200), (336, 336)]:
        assert image_token_count(size, mode=FIXED_672, pinpoints=pins, crop_size=336, patch_size=14) == 5 * 576 == 2880


def test_original_and_hf_pinpoints_differ_only_in_tie_breaking(next_hf, next_original):
    """The original code reads pinpoints as (width, height), transformers as (height, width); the loader swaps the
    original's pairs, so a small square image (a tie between 1x2 and 2x1) gets the original's 2 rows x 1 column,
    while the llava-hf port of the same release picks 1 row x 2 columns. Non-tied images agree."""
    hf_pins, original_pins = next_hf[1].config.image_grid_pinpoints, next_original[1].config.image_grid_pinpoints
    assert crop_grid((336, 336), original_pins, 336) == (2, 1)
    assert crop_grid((336, 336), hf_pins, 336) == (1, 2)
    for width, height in ASPECTS:
        assert crop_grid((height, width), original_pins, 336) == crop_grid((height, width), hf_pins, 336)


# -- preprocessing --------------------------------------------------------------------------------------------------


def reference_anyres(image: Image.Image, pinpoints_wh, crop: int, mean, std) -> np.ndarray:
    """LLaVA-1.6's ``process_anyres_image`` written out with PIL (pinpoints as (width, height), as the original)."""
    width, height = image.size
    best, best_effective, best_wasted = None, -1, None
    for pw, ph in pinpoints_wh:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pw * ph - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (pw, ph), effective, wasted
    pw, ph = best
    if pw / width < ph / height:
        new_w, new_h = pw, min(math.ceil(height * pw / width), ph)
    else:
        new_w, new_h = min(math.ceil(width * ph / height), pw), ph
    canvas = Image.new("RGB", (pw, ph), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((pw - new_w) // 2, (ph - new_h) // 2))
    crops = [canvas.crop((x, y, x + crop, y + crop)) for y in range(0, ph, crop) for x in range(0, pw, crop)]
    crops = [image.resize((crop, crop), Image.BICUBIC)] + crops
    arrays = [(np.asarray(c, dtype=np.float32) / 255.0 - np.array(mean)) / np.array(std) for c in crops]
    return np.stack([a.transpose(2, 0, 1) for a in arrays]).astype(np.float32)


def test_next_preprocessing_matches_llava_16_process_anyres(next_hf):
    from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    image_processor = next_hf[2]
    pins_wh = [[w, h] for h, w in next_hf[1].config.image_grid_pinpoints]
    for width, height in ASPECTS[:4]:
        image = picture(width, height, seed=3)
        ours = image_processor(images=[image], return_tensors="np")["pixel_values"][0]
        expected = reference_anyres(image, pins_wh, 336, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, atol=1e-5)


# -- FasterVLM's fixed grid ----------------------------------------------------------------------------------------


def test_fixed_grid_gives_five_crops_spatially_merged_without_newlines(tiny_next_hf):
    from llava.compression.families.llava_next import grid_mode, set_grid_mode

    _, model, image_processor, _ = load_pretrained_model(tiny_next_hf, device="cpu", next_grid=FIXED_672)
    assert model.llava_load_info.next_grid == FIXED_672 and grid_mode(model) == FIXED_672
    assert model.config.image_grid_pinpoints == [[672, 672]] == image_processor.image_grid_pinpoints
    side = 24
    images = [picture(w, h) for w, h in ASPECTS[:3]]
    inputs = image_processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape[:2] == (3, 5)
    with torch.no_grad():
        packed = model.model.get_image_features(**inputs).pooler_output
        crops = model.model.multi_modal_projector(
            model.model.vision_tower(inputs["pixel_values"][0], output_hidden_states=True).hidden_states[-2][:, 1:]
        )
    assert [int(p.shape[0]) for p in packed] == [2880 // 576 * side * side] * 3  # the tiny tower is 336/14: 2880
    first = packed[0]
    torch.testing.assert_close(first[:576], crops[0])  # the base image first
    grid = crops[1:].view(2, 2, side, side, -1)  # crops row-major: then one row-major map of the 48 x 48 grid
    expected = grid.permute(0, 2, 1, 3, 4).reshape(-1, grid.shape[-1])
    torch.testing.assert_close(first[576:], expected)
    newline = model.model.image_newline
    assert not any(torch.allclose(row, newline) for row in first)
    # back to LLaVA-1.6's own packing on the same instance: unpadding and newlines again
    set_grid_mode(model, ANYRES)
    assert model.config.image_grid_pinpoints == [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS]
    assert "pack_image_features" not in model.model.__dict__


# -- the family -----------------------------------------------------------------------------------------------------


def test_llava_next_family_is_registered_and_refuses_in_encoder_methods(next_hf):
    import llava.compression as compression
    from llava.compression.families import available_families, family_for
    from llava.compression.registry import CompressionConfigError

    model = next_hf[1]
    family = family_for(model)
    assert family.name == "llava-next" and "llava-next" in available_families()
    geometry = family.geometry(model)
    assert (geometry.num_patches, geometry.grid, geometry.has_cls) == (576, (24, 24), True)
    units = family.unit_geometries(model, image_sizes=[(333, 500), (1000, 1000)])
    assert len(units) == (1 + 2) + (1 + 4)
    with pytest.raises(CompressionConfigError, match="'ficoco-vl' acts at stages.*on LLaVA-NeXT"):
        compression.apply(model, "ficoco-vl")
    assert compression.apply(model, "none") is model


def test_video_llava_loader_names_a_llava_next_checkpoint_as_image_llava(tiny_next_hf):
    from videollava.model.builder import detect_layout as video_detect_layout

    with open(os.path.join(tiny_next_hf, "config.json")) as f:
        config = json.load(f)
    with pytest.raises(CheckpointError, match="is an image LLaVA checkpoint.*llava.model.builder"):
        video_detect_layout(config, tiny_next_hf)


def test_mistral_backbone_of_the_hf_layout_loads(tiny_next_hf, next_hf, tmp_path):
    """``llava-v1.6-mistral-7b-hf`` has a ``mistral`` text config; with the same weights (and no sliding window at
    this length) it gives the Vicuna-shaped model's logits."""
    import shutil

    from transformers import MistralModel

    folder = tmp_path / "mistral"
    shutil.copytree(tiny_next_hf, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"] = {**config["text_config"], "model_type": "mistral", "sliding_window": None}
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained_model(str(folder), device="cpu")
    assert loaded[1].config.text_config.model_type == "mistral"
    assert isinstance(loaded[1].model.language_model, MistralModel)
    image = picture(*ASPECTS[1])
    torch.testing.assert_close(logits_of(loaded, image), logits_of(next_hf, image))


def test_tiny_cli_writes_a_llava_next_checkpoint(tmp_path, capsys):
    from llava.model.tiny import main

    main(["--family", "llava-next", "--out", str(tmp_path / "next")])
    assert "tiny LLaVA-NeXT checkpoint (hf layout" in capsys.readouterr().out
    config = json.loads((tmp_path / "next" / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert config["image_grid_pinpoints"] == [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS]
