"""Video-LLaVA loading in both layouts, the LanguageBind temporal tower, tiny checkpoints and loader errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.original_layout import CheckpointError
from videollava.model.builder import load_pretrained_model, read_video_model_geometry
from videollava.model.generation import VideoLlavaGenerator
from videollava.model.languagebind import LanguageBindVideoModel
from videollava.model.tiny import (
    IMAGE_TOWER_FOLDER,
    VIDEO_TOWER_FOLDER,
    TinyVideoGeometry,
    build_tiny_state_dict,
    write_hf_layout,
    write_original_layout,
)
from videollava.model.tiny import (
    main as tiny_main,
)

# the CLI default has 24 tower layers; 4 keep the tests fast (the feature layer is still hidden_states[-2])
G = TinyVideoGeometry(vision_layers=4, text_layers=2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("videollava")
    return {
        "hf": write_hf_layout(str(root / "hf"), seed=0, g=G),
        "original": write_original_layout(str(root / "original"), seed=0, temporal="zero", g=G),
        "temporal": write_original_layout(str(root / "temporal"), seed=0, temporal="random", g=G),
    }


@pytest.fixture(scope="module")
def clip_pixels():
    return torch.randn(1, 8, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def _load(path, **kw):
    return load_pretrained_model(path, device="cpu", **kw)


def _logits(tok, model, pixels, question="what is the man doing?"):
    ids = VideoLlavaGenerator(tok, model).prompt_ids(question, [257] * 8)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), pixel_values_videos=pixels).logits


# -- tiny checkpoints --------------------------------------------------------------------------------------------


def test_same_seed_same_weights():
    a = build_tiny_state_dict(0, "random", G)
    b = build_tiny_state_dict(0, "random", G)
    c = build_tiny_state_dict(1, "random", G)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    # --temporal changes the temporal tensors only
    z = build_tiny_state_dict(0, "zero", G)
    changed = {k for k in a if not torch.equal(a[k], z[k])}
    assert changed and all(".temporal_" in k for k in changed)


def test_tiny_cli_rejects_temporal_for_hf(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tiny_main(["--out", str(tmp_path / "x"), "--layout", "hf", "--temporal", "random"])
    assert "no temporal layers" in capsys.readouterr().err


def test_original_layout_files(ckpts):
    root = ckpts["original"]
    with open(os.path.join(root, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["LlavaLlamaForCausalLM"]
    assert cfg["mm_video_tower"] == VIDEO_TOWER_FOLDER and cfg["mm_image_tower"] == IMAGE_TOWER_FOLDER
    shards = {}
    for name in sorted(os.listdir(root)):
        if name.startswith("pytorch_model-"):
            shards.update(torch.load(os.path.join(root, name), weights_only=True))
    temporal = [k for k in shards if k.startswith("model.video_tower.video_tower.") and ".temporal_" in k]
    assert len(temporal) == 11 * G.vision_layers  # 264 for the real 24-layer tower
    assert not any(k.startswith("model.image_tower.") and ".temporal_" in k for k in shards)
    assert shards["model.embed_tokens.weight"].shape[0] == G.base_vocab


# -- loading -----------------------------------------------------------------------------------------------------


def test_both_layouts_load(ckpts):
    tok_h, hf, proc_h, ctx = _load(ckpts["hf"])
    tok_o, orig, proc_o, _ = _load(ckpts["original"])
    assert type(hf.model.video_tower) is CLIPVisionModel
    assert isinstance(orig.model.video_tower, LanguageBindVideoModel)
    assert hf.videollava_load_info.layout == "hf" and not hf.videollava_load_info.temporal
    info = orig.videollava_load_info
    assert info.layout == "original" and info.temporal and info.num_frames == 8
    assert info.video_tower_weights == info.image_tower_weights == "folder"
    assert info.towers_share_spatial_weights is True
    assert len(orig.model.video_tower.temporal_parameters()) == 11 * G.vision_layers
    # same vocabulary conventions in both layouts
    for model in (hf, orig):
        assert model.config.image_token_id == G.base_vocab and model.config.video_token_id == G.base_vocab + 1
        assert model.config.text_config.vocab_size == 512
    assert tok_h.padding_side == tok_o.padding_side == "left"
    assert proc_o.transform == "languagebind" and proc_h.transform == "clip"
    assert ctx == 4096


def test_layouts_give_identical_logits_with_identity_temporal_layers(ckpts, clip_pixels):
    tok_h, hf, _, _ = _load(ckpts["hf"])
    tok_o, orig, _, _ = _load(ckpts["original"])
    a = _logits(tok_h, hf, clip_pixels)
    b = _logits(tok_o, orig, clip_pixels)
    assert a.shape[1] == b.shape[1] > 8 * 257
    assert torch.equal(a, b)


def test_nonzero_temporal_layers_change_the_output(ckpts, clip_pixels):
    tok, zero, _, _ = _load(ckpts["original"])
    _, active, _, _ = _load(ckpts["temporal"])
    with torch.no_grad():
        fz = zero.model.get_video_features(pixel_values_videos=clip_pixels).pooler_output
        fa = active.model.get_video_features(pixel_values_videos=clip_pixels).pooler_output
        iz = zero.model.get_image_features(pixel_values=clip_pixels[0, :2]).pooler_output
        ia = active.model.get_image_features(pixel_values=clip_pixels[0, :2]).pooler_output
    assert fz.shape == fa.shape == (8, 257, G.text_hidden)
    assert (fz - fa).abs().max() > 1e-3
    assert torch.equal(iz, ia)  # the image tower has no temporal layers
    assert not torch.allclose(_logits(tok, zero, clip_pixels), _logits(tok, active, clip_pixels))


def test_embedded_tower_fallback(ckpts, tmp_path, clip_pixels):
    copy = tmp_path / "no-tower-folders"
    shutil.copytree(ckpts["temporal"], copy)
    shutil.rmtree(copy / VIDEO_TOWER_FOLDER)
    shutil.rmtree(copy / IMAGE_TOWER_FOLDER)
    tok, fallback, _, _ = _load(str(copy))
    info = fallback.videollava_load_info
    assert info.video_tower_weights == info.image_tower_weights == "embedded" and info.video_tower is None
    assert info.temporal
    tok2, folder, _, _ = _load(ckpts["temporal"])
    assert torch.equal(_logits(tok, fallback, clip_pixels), _logits(tok2, folder, clip_pixels))


def test_geometry_from_config_files(ckpts):
    for path in ckpts.values():
        geo = read_video_model_geometry(path)
        assert geo.num_patches == 256 and geo.grid == (16, 16)
        assert geo.vision_layers == G.vision_layers and geo.feature_layer == G.vision_layers - 2


def test_prompt_ids_and_placeholder_run(ckpts):
    tok, model, _, _ = _load(ckpts["original"])
    gen = VideoLlavaGenerator(tok, model)
    ids = gen.prompt_ids("what is it?", [257] * 8)
    vid = model.config.video_token_id
    first = ids.index(vid)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[first : first + 2056] == [vid] * 2056 and ids.count(vid) == 2056
    # chunk-wise tokenisation: the text after the run starts with the dummy prefix, then the newline byte
    after = tok.convert_ids_to_tokens(ids[first + 2056 : first + 2058])
    assert after == ["▁", "<0x0A>"]
    prompt = gen.build_prompt("what is it?")
    assert prompt.endswith("USER: " + "<image>" * 8 + "\nwhat is it? ASSISTANT:")
    assert prompt.startswith("A chat between a curious human")


def test_original_layout_prompt_ids_equal_sentencepiece(ckpts):
    """The original layout tokenizes as Video-LLaVA's slow SentencePiece tokenizer: each chunk around the frames is
    ``sp.encode`` (LLaMA's legacy=False handling), runs of spaces included (issue 11 item 1)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(ckpts["original"], "tokenizer.model"))
    tok, model, _, _ = _load(ckpts["original"])
    gen = VideoLlavaGenerator(tok, model)
    vid = model.config.video_token_id
    for question in ("what is  the man doing?", "describe:\n    indented  text\tand a tab", "这是什么？  猫", " x  "):
        prompt = gen.build_prompt(question)
        chunks = prompt.split("<image>")
        expected = [sp.bos_id()] + sp.encode(chunks[0]) + [vid] * 2056 + sp.encode(chunks[-1])
        assert gen.prompt_ids(question, [257] * 8) == expected, question
        answer_ids = sp.encode(question) + [sp.eos_id()]
        assert tok.batch_decode([answer_ids], skip_special_tokens=True)[0] == sp.decode(answer_ids)


def test_vision_hidden_act_override(ckpts, clip_pixels):
    _, model, _, _ = _load(ckpts["hf"], vision_hidden_act="quick_gelu")
    _, ref, _, _ = _load(ckpts["hf"])
    with torch.no_grad():
        a = model.model.get_video_features(pixel_values_videos=clip_pixels).pooler_output
        b = ref.model.get_video_features(pixel_values_videos=clip_pixels).pooler_output
    assert not torch.allclose(a, b)


# -- the LanguageBind tower against a literal implementation of videollava.md section 2.3 -------------------------


def _tiny_tower(layers=2, frames=8, seed=0, attn="sdpa") -> LanguageBindVideoModel:
    # sdpa keeps float64 throughout (CLIP's eager path takes the softmax in float32)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           image_size=28, patch_size=14, hidden_act="gelu", attn_implementation=attn)
    torch.manual_seed(seed)
    tower = LanguageBindVideoModel(cfg, frames).eval().double()
    with torch.no_grad():
        for layer in tower.encoder.layers:
            layer.temporal_embedding.normal_(0, 0.5)
            for p in layer.temporal_attn.parameters():
                p.normal_(0, 0.3)
    return tower


def _attend(attn, x):
    """Multi-head attention of one sequence ``x`` ``[M, D]`` written out (q scaled by d^-1/2, no mask)."""
    m, d = x.shape
    h = attn.num_heads
    q = (attn.q_proj(x) * attn.scale).view(m, h, -1).transpose(0, 1)
    k = attn.k_proj(x).view(m, h, -1).transpose(0, 1)
    v = attn.v_proj(x).view(m, h, -1).transpose(0, 1)
    out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    return attn.out_proj(out.transpose(0, 1).reshape(m, d))


def _reference_hidden_states(tower, pixels, frames):
    h = tower.pre_layrnorm(tower.embeddings(pixels))
    states = [h]
    for layer in tower.encoder.layers:
        bt, n, _ = h.shape
        h = h.clone()
        for i in range(bt):
            h[i] = h[i] + layer.temporal_embedding[0, i % frames]
        temporal = torch.zeros_like(h)
        for b in range(bt // frames):
            rows = slice(b * frames, (b + 1) * frames)
            for pos in range(n):  # attention over the frames of one spatial position, [CLS] included
                temporal[rows, pos] = _attend(layer.temporal_attn, layer.temporal_layer_norm1(h[rows, pos]))
        h = h + temporal
        h = h + torch.stack([_attend(layer.self_attn, layer.layer_norm1(f)) for f in h])
        h = h + layer.mlp(layer.layer_norm2(h))
        states.append(h)
    return states


def test_tower_matches_literal_spec_forward():
    tower = _tiny_tower()
    pixels = torch.randn(16, 3, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tower(pixels, output_hidden_states=True)
        ref = _reference_hidden_states(tower, pixels, 8)
    assert len(out.hidden_states) == len(ref) == 3
    for got, want in zip(out.hidden_states, ref):
        assert (got - want).abs().max() < 1e-10


def test_tower_records_spatial_attentions_only():
    tower = _tiny_tower(attn="eager")
    with torch.no_grad():
        out = tower(torch.randn(8, 3, 28, 28, dtype=torch.float64), output_attentions=True)
    assert len(out.attentions) == 2
    assert out.attentions[0].shape == (8, 4, 5, 5)  # per frame over its 5 tokens, not over the 8 frames


def test_temporal_path_off_equals_plain_clip_per_frame():
    tower = _tiny_tower()
    with torch.no_grad():
        for layer in tower.encoder.layers:
            layer.temporal_embedding.zero_()
            layer.temporal_attn.out_proj.weight.zero_()
            layer.temporal_attn.out_proj.bias.zero_()
    plain = CLIPVisionModel(tower.config).eval().double()
    plain.load_state_dict({k: v for k, v in tower.state_dict().items() if ".temporal_" not in k})
    pixels = torch.randn(8, 3, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(tower(pixels, output_hidden_states=-2).hidden_states[-2],
                           plain(pixels, output_hidden_states=-2).hidden_states[-2])


def test_frames_interact_within_a_clip_but_clips_do_not_mix():
    tower = _tiny_tower()
    g = torch.Generator().manual_seed(2)
    a = torch.randn(8, 3, 28, 28, dtype=torch.float64, generator=g)
    b = torch.randn(8, 3, 28, 28, dtype=torch.float64, generator=g)
    with torch.no_grad():
        ha = tower(a).last_hidden_state
        hb = tower(b).last_hidden_state
        hab = tower(torch.cat([a, b])).last_hidden_state
        swapped = a.clone()
        swapped[[6, 7]] = a[[7, 6]]
        hs = tower(swapped).last_hidden_state
    assert torch.allclose(hab[:8], ha, atol=1e-12) and torch.allclose(hab[8:], hb, atol=1e-12)
    # frame 0 is unchanged but sees other frames at other times
    assert (hs[0] - ha[0]).abs().max() > 1e-6


def test_tower_requires_whole_clips():
    tower = _tiny_tower()
    with pytest.raises(ValueError, match="clips of exactly 8 frames"):
        tower(torch.randn(7, 3, 28, 28, dtype=torch.float64))


def test_tower_state_dict_keys():
    keys = set(_tiny_tower(layers=1).state_dict())
    temporal = {k for k in keys if ".temporal_" in k}
    assert temporal == {
        "encoder.layers.0.temporal_embedding",
        *(f"encoder.layers.0.temporal_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")),
        "encoder.layers.0.temporal_attn.out_proj.weight", "encoder.layers.0.temporal_attn.out_proj.bias",
        "encoder.layers.0.temporal_layer_norm1.weight", "encoder.layers.0.temporal_layer_norm1.bias",
    }


# -- loader errors -----------------------------------------------------------------------------------------------


def _write_config(folder, cfg):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return str(folder)


def test_error_for_image_llava_and_unknown_configs(tmp_path):
    llava = _write_config(tmp_path / "llava", {"model_type": "llava", "vision_config": {}, "text_config": {}})
    with pytest.raises(CheckpointError, match="image LLaVA checkpoint"):
        _load(llava)
    orig_llava = _write_config(tmp_path / "llava-orig", {"architectures": ["LlavaLlamaForCausalLM"],
                                                          "mm_vision_tower": "openai/clip"})
    with pytest.raises(CheckpointError, match="no video tower"):
        _load(orig_llava)
    other = _write_config(tmp_path / "bert", {"model_type": "bert"})
    with pytest.raises(CheckpointError, match="neither the transformers Video-LLaVA port"):
        _load(other)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        _load(str(tmp_path))
    with pytest.raises(CheckpointError, match="model folder not found"):
        _load(str(tmp_path / "nope"))


def _rewrite_shards(folder, drop_prefix):
    for name in os.listdir(folder):
        if name.startswith("pytorch_model-"):
            path = os.path.join(folder, name)
            sd = torch.load(path, weights_only=True)
            torch.save({k: v for k, v in sd.items() if not k.startswith(drop_prefix)}, path)
    index = os.path.join(folder, "pytorch_model.bin.index.json")
    with open(index) as f:
        data = json.load(f)
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if not k.startswith(drop_prefix)}
    with open(index, "w") as f:
        json.dump(data, f)


def test_error_for_missing_video_tower(ckpts, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpts["original"], copy)
    shutil.rmtree(copy / VIDEO_TOWER_FOLDER)
    _rewrite_shards(str(copy), "model.video_tower.")
    with pytest.raises(CheckpointError, match=r"video tower .*not found locally.*--video-tower"):
        _load(str(copy))
    # an explicit folder that is not there
    with pytest.raises(CheckpointError, match="--video-tower"):
        _load(ckpts["original"], video_tower=str(tmp_path / "missing"))


def test_error_for_tower_without_temporal_weights(ckpts, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpts["original"], copy)
    weights = copy / VIDEO_TOWER_FOLDER / "pytorch_model.bin"
    sd = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in sd.items() if ".temporal_" not in k}, weights)
    with pytest.raises(CheckpointError, match="add_time_attn=true but the weights from .*no temporal layers"):
        _load(str(copy))


def test_error_for_shape_mismatch_names_the_tower(ckpts, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpts["original"], copy)
    weights = copy / VIDEO_TOWER_FOLDER / "pytorch_model.bin"
    sd = torch.load(weights, weights_only=True)
    key = "vision_model.encoder.layers.1.temporal_attn.k_proj.weight"
    sd[key] = sd[key][:, :-1].clone()
    torch.save(sd, weights)
    with pytest.raises(CheckpointError, match=rf"shape mismatch for model\.video_tower\.encoder\.layers\.1\.temporal_attn"
                                              rf"\.k_proj\.weight \(from .*{VIDEO_TOWER_FOLDER}\)"):
        _load(str(copy))


def test_error_for_mismatched_mm_hidden_size(ckpts, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpts["original"], copy)
    with open(copy / "config.json") as f:
        cfg = json.load(f)
    cfg["mm_hidden_size"] = 1024
    _write_config(copy, cfg)
    with pytest.raises(CheckpointError, match="mm_hidden_size=1024"):
        _load(str(copy))


def test_error_for_temporal_weights_in_hf_layout(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "hf"
    shutil.copytree(ckpts["hf"], copy)
    sd = load_file(copy / "model.safetensors")
    sd["video_tower.vision_model.encoder.layers.0.temporal_embedding"] = torch.zeros(1, 8, G.vision_hidden)
    save_file(sd, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="temporal-attention weights .* cannot use"):
        _load(str(copy))


def test_error_for_tower_weights_without_a_place(ckpts, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpts["original"], copy)
    weights = copy / VIDEO_TOWER_FOLDER / "pytorch_model.bin"
    sd = torch.load(weights, weights_only=True)
    sd["vision_model.encoder.layers.0.temporal_attn.q_proj.lora_A.weight"] = torch.zeros(4, G.vision_hidden)
    torch.save(sd, weights)
    with pytest.raises(CheckpointError, match=r"tower weights that the model has no place for: .*lora_A"):
        _load(str(copy))


@pytest.mark.parametrize("how", ["truncated", "garbage", "damaged header", "empty"])
def test_error_for_damaged_weight_file_names_it(ckpts, tmp_path, how):
    from tests.model.test_checkpoint_errors import PROBLEM_WORDS, corrupt

    hf = shutil.copytree(ckpts["hf"], str(tmp_path / "hf"))
    path = corrupt(os.path.join(hf, "model.safetensors"), how)
    with pytest.raises(CheckpointError) as exc:
        _load(hf)
    assert path in str(exc.value) and PROBLEM_WORDS[how] in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("layout,name", [("hf", "tokenizer.json"), ("original", "tokenizer.model")])
def test_error_for_missing_tokenizer_file_names_it(ckpts, tmp_path, layout, name):
    ckpt = shutil.copytree(ckpts[layout], str(tmp_path / layout))
    os.remove(os.path.join(ckpt, name))
    with pytest.raises(CheckpointError, match=f"{name}.*missing") as exc:
        _load(ckpt)
    assert "do not belong together" not in str(exc.value)
