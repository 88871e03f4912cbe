"""Per-frame (and global) token compression on Video-LLaVA with the LanguageBind temporal tower, through
``llava.compression.apply`` (the Video-LLaVA family)."""

from __future__ import annotations

import pytest
import torch

import llava.compression as vtc
from llava.compression import available_methods, get_method
from llava.compression.registry import CompressionConfigError, Stage
from llava.eval.inference import GenerationSettings
from videollava.model.builder import load_pretrained_model
from videollava.model.family import applied_state
from videollava.model.generation import VideoLlavaGenerator
from videollava.model.tiny import TinyVideoGeometry, write_original_layout

G = TinyVideoGeometry(vision_layers=4, text_layers=2)
SETTINGS = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = write_original_layout(str(tmp_path_factory.mktemp("vl") / "temporal"), seed=0, temporal="random", g=G)
    tok, model, _, _ = load_pretrained_model(path, device="cpu")
    return tok, model


@pytest.fixture(scope="module")
def videos():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 8, 3, 224, 224, generator=g)


@pytest.fixture(autouse=True)
def _clean(loaded):
    yield
    vtc.remove(loaded[1])


def _feature_layer(model, videos):
    """hidden_states[-2] of the video tower and the eager head-mean [CLS] attention of its layer."""
    tower = model.model.video_tower
    frames = videos.reshape(-1, 3, 224, 224)
    layer = tower.encoder.layers[G.vision_layers - 2].self_attn
    store = {}
    hooks = [layer.q_proj.register_forward_hook(lambda m, a, o: store.__setitem__("q", o)),
             layer.k_proj.register_forward_hook(lambda m, a, o: store.__setitem__("k", o))]
    with torch.no_grad():
        hs = tower(frames, output_hidden_states=True).hidden_states[-2]
    for h in hooks:
        h.remove()
    q, k = store["q"], store["k"]
    heads, d = layer.num_heads, layer.head_dim
    qh = q[:, :1].reshape(-1, 1, heads, d).transpose(1, 2)
    kh = k.reshape(k.shape[0], -1, heads, d).transpose(1, 2)
    attn = torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1)[:, :, 0, 1:].mean(1)  # [frames, 256]
    return hs, attn


def test_per_frame_budget_keeps_L_per_frame_in_raster_order(loaded, videos):
    tok, model = loaded
    L = 16
    vtc.apply(model, "fastervlm", visual_token_num=L)
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=videos)
    hs, attn = _feature_layer(model, videos)
    assert out.pooler_output.shape == (16, L, G.text_hidden)  # [B*T, L, D]
    for v, trace in enumerate(out.compression_trace):
        assert trace["visual_tokens"] == 8 * L and trace["tokens_per_frame"] == [L] * 8
        assert trace["keep_cls"] is False and trace["budget_mode"] == "per-frame"
        for f, kept in enumerate(trace["kept_indices"]):
            frame = v * 8 + f
            assert kept == sorted(kept) and len(set(kept)) == L
            assert set(kept) == set(torch.topk(attn[frame], L).indices.tolist())
        # features: the projector applied to the kept layer -2 patches, frame after frame, raster order inside
        idx = [torch.tensor(k) + 1 for k in trace["kept_indices"]]
        expected = torch.cat([hs[v * 8 + f, idx[f]] for f in range(8)])
        with torch.no_grad():
            expected = model.model.multi_modal_projector(expected)
        assert torch.allclose(out.features_per_video[v], expected, atol=1e-5)


def test_keep_all_equals_no_compression(loaded, videos):
    tok, model = loaded
    gen = VideoLlavaGenerator(tok, model)
    with torch.no_grad():
        ref = model.model.get_video_features(pixel_values_videos=videos).pooler_output
    (base,) = gen.generate(["what is the man doing?"], [videos[0]], SETTINGS)
    vtc.apply(model, "fastervlm", visual_token_num=256, keep_cls=True)
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=videos)
    assert torch.allclose(out.pooler_output, ref, atol=1e-6)
    (kept,) = gen.generate(["what is the man doing?"], [videos[0]], SETTINGS)
    assert kept.text == base.text
    assert kept.trace["visual_tokens"] == base.trace["visual_tokens"] == 2056
    # FasterVLM's video count without the per-frame [CLS]: 8 x 256
    vtc.apply(model, "fastervlm", visual_token_num=256)
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=videos)
    assert torch.allclose(out.pooler_output, ref[:, 1:], atol=1e-6)


def test_keep_cls_puts_each_frame_cls_first(loaded, videos):
    tok, model = loaded
    with torch.no_grad():
        ref = model.model.get_video_features(pixel_values_videos=videos).pooler_output  # [16, 257, D]
    vtc.apply(model, "fastervlm", visual_token_num=8, keep_cls=True)
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=videos)
    assert out.pooler_output.shape == (16, 9, G.text_hidden)
    assert torch.allclose(out.pooler_output[:, 0], ref[:, 0], atol=1e-6)
    assert out.compression_trace[0]["keep_cls"] is True and out.compression_trace[0]["visual_tokens"] == 72


def test_global_budget(loaded, videos):
    tok, model = loaded
    L = 16
    vtc.apply(model, "fastervlm", visual_token_num=L, budget_mode="global")
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=videos)
    _, attn = _feature_layer(model, videos)
    for v, trace in enumerate(out.compression_trace):
        assert trace["visual_tokens"] == sum(trace["tokens_per_frame"]) == 8 * L
        assert out.features_per_video[v].shape[0] == 8 * L
        flat = attn[v * 8 : (v + 1) * 8].reshape(-1)
        chosen = {f * 256 + i for f, kept in enumerate(trace["kept_indices"]) for i in kept}
        assert chosen == set(torch.topk(flat, 8 * L).indices.tolist())
        assert all(k == sorted(k) for k in trace["kept_indices"])
    gen = VideoLlavaGenerator(tok, model)
    results = gen.generate(["what?", "why?"], list(videos), SETTINGS)
    assert [r.trace["visual_tokens"] for r in results] == [8 * L, 8 * L]


PRE_LLM_ARGS = {"vtc-cls": {"visual_token_num": 16, "start_layer": 0},
                "prumerge+": {"visual_token_num": 16, "prumerge_budget_rule": "exact-count"}}


def test_prumerge_plus_default_rule_is_refused_on_frames_with_the_fix_named(loaded):
    """The VTC-CLS budget rule's constants are for LLaVA-1.5's 576 patches; a frame has 256."""
    _, model = loaded
    with pytest.raises(CompressionConfigError, match="defined for 576 patches.*--prumerge-budget-rule exact-count"):
        vtc.apply(model, "prumerge+", visual_token_num=16)
# in-LLM methods on the 2-layer tiny LLM (pruning before layer 1); budgets are per video
LLM_ARGS = {
    "fastv": {"fastv_k": 1, "visual_token_num": 512},
    "dart": {"dart_k": 1, "visual_token_num": 512},
    "pdrop": {"pdrop_layers": "1", "visual_token_num": 1500},
    "sparsevlm": {"sparsevlm_layers": "0", "sparsevlm_counts": "300"},
    "ficoco-l": {"ficoco_start_layer": 1, "visual_token_num": 512},
}


@pytest.mark.parametrize("method", [m for m in available_methods() if m != "none"])
def test_every_registered_method_runs_or_is_refused(loaded, videos, method):
    tok, model = loaded
    stages = get_method(method).stages
    gen = VideoLlavaGenerator(tok, model)
    if stages == (Stage.PRE_LLM,):
        vtc.apply(model, method, **PRE_LLM_ARGS.get(method, {"visual_token_num": 16}))
        (result,) = gen.generate(["what is it?"], [videos[0]], SETTINGS)
        trace = result.trace
        assert len(trace["tokens_per_frame"]) == 8 and sum(trace["tokens_per_frame"]) == trace["visual_tokens"] > 0
        assert trace["visual_tokens"] <= 8 * 16
    elif stages == (Stage.LLM,):
        vtc.apply(model, method, **LLM_ARGS[method])
        (result,) = gen.generate(["what is it?"], [videos[0]], SETTINGS)
        per_layer = result.trace["visual_tokens_per_layer"]
        assert result.trace["visual_tokens"] == per_layer[0] == 2056  # all frames' tokens enter the LLM
        assert per_layer[1] < 2056
    else:  # inside the vision encoder
        with pytest.raises(CompressionConfigError, match="only pre-LLM methods .* and in-LLM methods"):
            vtc.apply(model, method)


def test_fastv_keep_all_equals_no_compression(loaded, videos):
    tok, model = loaded
    gen = VideoLlavaGenerator(tok, model)
    (base,) = gen.generate(["what?"], [videos[1]], SETTINGS)
    vtc.apply(model, "fastv", fastv_k=1, visual_token_num=2056)
    hooks = len(model.model._forward_pre_hooks)
    (kept,) = gen.generate(["what?"], [videos[1]], SETTINGS)
    assert kept.text == base.text and kept.trace["visual_tokens_per_layer"] == [2056, 2056]
    with pytest.raises(CompressionConfigError, match="apply to pre-LLM methods"):
        vtc.apply(model, "fastv", fastv_k=1, visual_token_num=512, keep_cls=True)
    vtc.remove(model)
    assert "forward" not in model.model.language_model.__dict__
    assert len(model.model._forward_pre_hooks) == hooks - 1 and applied_state(model) is None


def test_invalid_video_configs(loaded):
    _, model = loaded
    with pytest.raises(CompressionConfigError, match="global is implemented for fastervlm only"):
        vtc.apply(model, "random", visual_token_num=8, budget_mode="global")
    with pytest.raises(CompressionConfigError, match="--visual-token-num must be between 1 and 256"):
        vtc.apply(model, "fastervlm", visual_token_num=257)
    with pytest.raises(CompressionConfigError, match="--budget-mode"):
        vtc.apply(model, "fastervlm", visual_token_num=8, budget_mode="per-video")
    assert applied_state(model) is None


def test_apply_and_remove_are_per_instance(loaded, videos):
    tok, model = loaded
    cls_method = type(model.model).get_video_features
    vtc.apply(model, "fastervlm", visual_token_num=4)
    assert type(model.model).get_video_features is cls_method
    assert vtc.describe(model)["method"] == "fastervlm"
    vtc.apply(model, "none")
    assert "get_video_features" not in model.model.__dict__ and vtc.describe(model)["method"] == "none"
    with torch.no_grad():
        assert model.model.get_video_features(pixel_values_videos=videos[:1]).pooler_output.shape[1] == 257


def test_sampling_is_seeded(loaded, videos):
    tok, model = loaded
    gen = VideoLlavaGenerator(tok, model)
    hot = GenerationSettings(max_new_tokens=3, temperature=1.5)
    a = gen.generate(["what?"], [videos[0]], hot, seed=11)[0].text
    b = gen.generate(["what?"], [videos[0]], hot, seed=11)[0].text
    assert a == b


def test_llava_compression_apply_finds_the_video_family_through_its_entry_point(loaded, videos, monkeypatch):
    """``llava.compression.apply`` on a Video-LLaVA model whose family was never registered in this process: the
    registry loads it from the ``vtc_toolkit.families`` entry point (as pyproject.toml declares it)."""
    import importlib.metadata

    from llava.compression import families

    _, model = loaded
    monkeypatch.setattr(families, "_FAMILIES", {k: v for k, v in families._FAMILIES.items() if k != "video-llava"})
    point = importlib.metadata.EntryPoint(name="video-llava", value="videollava.model.family:FAMILY",
                                          group=families.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [point] if kw.get("group") == families.ENTRY_POINT_GROUP else [])
    vtc.apply(model, "fastervlm", visual_token_num=4, budget_mode="global", keep_cls=True)
    assert families.family_for(model).name == "video-llava"
    assert vtc.describe(model) == {"method": "fastervlm", "method_args": vtc.applied_config(model).to_dict(),
                                   "stage": "pre_llm", "budget_mode": "global", "keep_cls": True}
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=videos[:1])
    assert out.compression_trace[0]["visual_tokens"] == 8 * 5 and vtc.last_trace(model) == out.compression_trace
    vtc.remove(model)
    assert applied_state(model) is None and vtc.applied_config(model).name == "none"
