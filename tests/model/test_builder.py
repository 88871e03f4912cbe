import json
import os
import shutil

import pytest
import torch

from llava.model.builder import get_model_name_from_path, load_pretrained_model, read_model_geometry
from llava.model.original_layout import CheckpointError
from llava.model.tiny import build_tiny_state_dict


def _logits(model, tokenizer):
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 336, 336)
    n = model.config.image_seq_length
    ids = torch.tensor([[1] + [model.config.image_token_id] * n + [5, 6, 7]] * 2)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixel_values).logits


def test_both_layouts_load_to_identical_logits(tiny_hf, tiny_original):
    tok_hf, hf, proc_hf, ctx_hf = load_pretrained_model(tiny_hf, device="cpu")
    tok_or, orig, proc_or, ctx_or = load_pretrained_model(tiny_original, device="cpu")
    assert hf.llava_load_info.layout == "hf" and orig.llava_load_info.layout == "original"
    assert torch.equal(_logits(hf, tok_hf), _logits(orig, tok_or))
    assert ctx_hf == ctx_or == 4096
    assert proc_hf.do_pad and proc_or.do_pad
    assert tok_hf.padding_side == tok_or.padding_side == "left"
    assert tok_hf.pad_token_id is not None and tok_or.pad_token_id is not None
    # SDPA everywhere: nothing is switched to eager
    assert hf.config._attn_implementation == "sdpa"
    assert hf.model.vision_tower.config._attn_implementation == "sdpa"


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_tiny_state_dict(3), build_tiny_state_dict(3), build_tiny_state_dict(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_tiny_geometry_is_llava_shaped(tiny_hf):
    g = read_model_geometry(tiny_hf)
    assert (g.num_patches, g.grid, g.vision_layers, g.vision_feature_layer) == (576, (24, 24), 24, -2)


def test_geometry_of_original_layout(tiny_original):
    assert read_model_geometry(tiny_original) == read_model_geometry(
        tiny_original, os.path.join(tiny_original, "clip-vit-tiny-patch14-336"))


def test_model_name_from_path():
    assert get_model_name_from_path("checkpoints/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert get_model_name_from_path("runs/llava-x/checkpoint-500") == "llava-x_checkpoint-500"


def test_folder_that_is_neither_layout(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(CheckpointError, match=r"config.json is neither a llava-hf checkpoint .* found model_type='bert'"):
        load_pretrained_model(str(tmp_path), device="cpu")


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        load_pretrained_model(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_pretrained_model(str(tmp_path), device="cpu")


def test_missing_vision_tower_names_field_and_fix(tiny_original, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_original, ckpt, ignore=shutil.ignore_patterns("clip-vit-*"))
    with pytest.raises(CheckpointError, match=r"vision tower 'clip-vit-tiny-patch14-336' \('mm_vision_tower' in .*"
                                              r"config.json\) not found locally.*--vision-tower PATH"):
        load_pretrained_model(str(ckpt), device="cpu")
    # the override finds it
    tok, model, _, _ = load_pretrained_model(
        str(ckpt), device="cpu", vision_tower=os.path.join(tiny_original, "clip-vit-tiny-patch14-336"))
    assert model.llava_load_info.layout == "original"


def test_shape_mismatch_names_key_file_and_expectation(tiny_original, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_original, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 200
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch for model\.language_model\.layers\.0\.mlp\..*"
                                              r"found \(128, 256\), expected \(128, 200\)"):
        load_pretrained_model(str(ckpt), device="cpu")


def test_missing_shard_is_named(tiny_original, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_original, ckpt)
    os.remove(ckpt / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin is listed in the checkpoint index but missing"):
        load_pretrained_model(str(ckpt), device="cpu")


def test_hf_layout_shape_mismatch(tiny_hf, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_hf, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 200
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="ckpt"):
        load_pretrained_model(str(ckpt), device="cpu")


def test_lora_folder_is_refused(tiny_hf, tmp_path):
    ckpt = tmp_path / "lora"
    shutil.copytree(tiny_hf, ckpt)
    (ckpt / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="LoRA adapter"):
        load_pretrained_model(str(ckpt), device="cpu")


def test_projector_only_checkpoint_with_model_base(tiny_original, tmp_path):
    """A projector-only original checkpoint loads on top of --model-base and equals the full model."""
    proj = tmp_path / "projector-only"
    proj.mkdir()
    full = torch.load(os.path.join(tiny_original, "pytorch_model-00001-of-00002.bin"), weights_only=True)
    full.update(torch.load(os.path.join(tiny_original, "pytorch_model-00002-of-00002.bin"), weights_only=True))
    torch.save({k: v for k, v in full.items() if "mm_projector" in k}, proj / "mm_projector.bin")
    shutil.copy(os.path.join(tiny_original, "config.json"), proj / "config.json")
    shutil.copytree(os.path.join(tiny_original, "clip-vit-tiny-patch14-336"), proj / "clip-vit-tiny-patch14-336")
    with pytest.raises(CheckpointError, match="needs --model-base"):
        load_pretrained_model(str(proj), device="cpu")
    tok, model, _, _ = load_pretrained_model(str(proj), model_base=tiny_original, device="cpu")
    _, ref, _, _ = load_pretrained_model(tiny_original, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_convert_original_to_hf_layout_keeps_logits(tiny_original, tmp_path):
    from llava.model.convert import convert

    dst = convert(tiny_original, str(tmp_path / "converted"), dtype="float32")
    tok_c, converted, _, _ = load_pretrained_model(dst, device="cpu")
    tok_o, original, _, _ = load_pretrained_model(tiny_original, device="cpu")
    assert converted.llava_load_info.layout == "hf"
    assert torch.equal(_logits(converted, tok_c), _logits(original, tok_o))
    assert tok_c.convert_tokens_to_ids("<image>") == converted.config.image_token_id
    assert tok_c.pad_token_id == converted.config.image_token_id + 1
    # the llava-hf tokenizer.json is built from tokenizer.model with the merges ordered by score
    for text in ("What is  this?", "USER: ", "\n    indented\tcode  here", "这是什么？  猫"):
        assert tok_c(text).input_ids == tok_o(text).input_ids, text
    from transformers import AutoProcessor  # processor_config.json is written

    processor = AutoProcessor.from_pretrained(dst)
    assert processor.patch_size == 14 and processor.num_additional_image_tokens == 1
    with pytest.raises(CheckpointError, match="not empty"):
        convert(tiny_original, dst)
