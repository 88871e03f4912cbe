"""The LLaVA integration on a tiny random ``LlavaForConditionalGeneration`` (SDPA, fp32, CPU)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from compression_helpers import IMAGE_TOKEN_ID, NUM_PATCHES, build_tiny_llava, make_prompts
from transformers import LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaModel

import llava.compression as vtc
from llava.compression.families.llava import collect_vision_signals

ORIGINAL_GET_IMAGE_FEATURES = LlavaModel.get_image_features
ORIGINAL_GENERATE = LlavaForConditionalGeneration.generate
GEN = {"max_new_tokens": 6, "do_sample": False}


def features(model, pixels):
    with torch.no_grad():
        return model.model.get_image_features(pixel_values=pixels)


def generate(model, ids, mask, pixels=None, **kw):
    if pixels is not None:
        kw["pixel_values"] = pixels
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **{**GEN, **kw})


def is_patched(model) -> bool:
    return "get_image_features" in model.model.__dict__ or "generate" in model.__dict__


# -- scores from hooks ------------------------------------------------------------------------------------------------


def test_hook_cls_attention_matches_eager_attentions(shared_model, pixels3):
    eager = copy.deepcopy(shared_model)
    eager.set_attn_implementation({"vision_config": "eager"})
    layers = (0, 11, 20, 21, 22, 23)
    pixels = pixels3[:2]
    with torch.no_grad():
        ref = eager.model.vision_tower(
            pixels, output_attentions=True, output_hidden_states=True, return_dict=True
        )
        signals, _ = collect_vision_signals(shared_model, pixels, layers)
    for layer in layers:
        torch.testing.assert_close(
            signals.cls_attention(layer), ref.attentions[layer][:, :, 0, :], atol=1e-5, rtol=0
        )
    # PruMerge's single-head variant, recomputed from the eager layer input
    attn = eager.model.vision_tower.encoder.layers[23].self_attn
    with torch.no_grad():
        h = eager.model.vision_tower.encoder.layers[23].layer_norm1(ref.hidden_states[23])
        q, k = attn.q_proj(h)[:, :1], attn.k_proj(h)
        expected = ((q @ k.transpose(1, 2)) / 64**0.5).softmax(-1)[:, 0]
    torch.testing.assert_close(signals.cls_attention_single_head(23), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(signals.tokens, ref.hidden_states[-2])
    assert shared_model.model.vision_tower.config._attn_implementation == "sdpa"
    for layer in shared_model.model.vision_tower.encoder.layers:  # probe hooks are gone
        assert not layer.self_attn.q_proj._forward_hooks and not layer.self_attn.k_proj._forward_hooks


def test_vtc_cls_at_layer_22_keeps_fastervlm_tokens(model, pixels3):
    for budget in (16, 64, 300):
        vtc.apply(model, "fastervlm", visual_token_num=budget)
        fast = features(model, pixels3)
        vtc.apply(model, "vtc-cls", visual_token_num=budget, start_layer=22)
        ens = features(model, pixels3)
        assert [t["kept_indices"] for t in ens.compression_trace] == [
            t["kept_indices"] for t in fast.compression_trace
        ]
        for a, b in zip(fast.pooler_output, ens.pooler_output):
            assert torch.equal(a, b)
    vtc.apply(model, "vtc-cls", visual_token_num=64, start_layer=20)
    assert [t["kept_indices"] for t in features(model, pixels3).compression_trace] != [
        t["kept_indices"] for t in fast.compression_trace
    ]


# -- output contract -------------------------------------------------------------------------------------------------


def test_get_image_features_contract(model, pixels3):
    vtc.apply(model, "prumerge+")  # adaptive: counts differ per image
    out = features(model, pixels3)
    assert isinstance(out.pooler_output, list) and len(out.pooler_output) == 3
    hidden = model.config.text_config.hidden_size
    for feat, trace in zip(out.pooler_output, out.compression_trace):
        assert feat.shape == (trace["visual_tokens"], hidden)
        assert isinstance(trace["visual_tokens"], int)
        kept = trace["kept_indices"]
        assert kept == sorted(set(kept)) and all(isinstance(i, int) and 0 <= i < NUM_PATCHES for i in kept)
        assert trace["visual_tokens"] == len(kept) + 1  # + PruMerge's extra token
    json.dumps(out.compression_trace)
    assert vtc.last_trace(model) == out.compression_trace
    assert vtc.applied_config(model).name == "prumerge+"


def test_prumerge_plus_budget_traces_the_real_count(model, pixels3):
    vtc.apply(model, "prumerge+", visual_token_num=64)  # the VTC-CLS rule: top 13 + the 11-grid, near 64
    out = features(model, pixels3)
    for feat, trace in zip(out.pooler_output, out.compression_trace):
        kept = trace["kept_indices"]
        assert trace["visual_tokens"] == feat.shape[0] == len(kept) + 1
        assert set(range(0, 575, 11)) <= set(kept) and 54 <= len(kept) + 1 <= 67
    vtc.apply(model, "prumerge+", visual_token_num=64, prumerge_budget_rule="exact-count")
    assert [t["visual_tokens"] for t in features(model, pixels3).compression_trace] == [64] * 3


def test_generate_keeps_prompts_and_reports_traces(model, pixels3):
    ids, mask = make_prompts([True, False, True, True])
    vtc.apply(model, "fastervlm", visual_token_num=20)
    out = generate(model, ids, mask, pixels3)
    assert out.shape == (4, ids.shape[1] + GEN["max_new_tokens"])
    assert torch.equal(out[:, : ids.shape[1]], ids)
    traces = vtc.last_trace(model)
    assert [t["row"] for t in traces] == [0, 2, 3] and all(t["visual_tokens"] == 20 for t in traces)
    assert out.compression_trace == traces
    res = generate(model, ids, mask, pixels3, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(res.sequences, out) and len(res.scores) == GEN["max_new_tokens"]
    beams = generate(model, ids, mask, pixels3, num_beams=2, num_return_sequences=2)
    assert beams.shape[0] == 8 and torch.equal(beams[::2, : ids.shape[1]], ids)


# -- equivalences -----------------------------------------------------------------------------------------------------


def test_keep_all_is_identical_to_no_method(model, pixels3):
    ids, mask = make_prompts([True, True, True])
    ref_feats = features(model, pixels3).pooler_output
    ref_tokens = generate(model, ids, mask, pixels3)
    with torch.no_grad():
        ref_logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels3).logits
    for name in ("fastervlm", "vtc-cls", "divprune", "random", "pool"):
        vtc.apply(model, name, visual_token_num=NUM_PATCHES)
        out = features(model, pixels3)
        assert all(t["kept_indices"] == list(range(NUM_PATCHES)) for t in out.compression_trace)
        for a, b in zip(out.pooler_output, ref_feats):
            assert torch.equal(a, b), name
        assert torch.equal(generate(model, ids, mask, pixels3), ref_tokens), name
        prepared = vtc.prepare_multimodal_inputs(model, ids, mask, pixels3)
        assert torch.equal(prepared["input_ids"], ids)
        with torch.no_grad():
            logits = model(
                input_ids=prepared["input_ids"],
                attention_mask=prepared["attention_mask"],
                mm_encoder_outputs=prepared["mm_encoder_outputs"],
            ).logits
        assert torch.equal(logits, ref_logits), name


BATCH_METHODS = [
    ("fastervlm", {"visual_token_num": 40}),
    ("vtc-cls", {"visual_token_num": 40, "start_layer": 18, "ensemble": "max"}),
    ("prumerge", {}),
    ("prumerge+", {"visual_token_num": 50}),
    ("visionzip", {"visual_token_num": 64}),
    ("divprune", {"visual_token_num": 30}),
    ("random", {"visual_token_num": 30, "seed": 3}),
    ("pool", {"visual_token_num": 36}),
]


@pytest.mark.parametrize("name,kwargs", BATCH_METHODS, ids=[m for m, _ in BATCH_METHODS])
def test_batch_of_three_equals_three_single_runs(model, pixels3, name, kwargs):
    vtc.apply(model, name, **kwargs)
    batch = features(model, pixels3)
    for i in range(3):
        single = features(model, pixels3[i : i + 1])
        assert single.compression_trace[0] == batch.compression_trace[i]
        torch.testing.assert_close(single.pooler_output[0], batch.pooler_output[i], atol=1e-5, rtol=1e-5)
    if name in ("fastervlm", "prumerge", "visionzip", "random"):
        ids, mask = make_prompts([True, True, True], seed=5)
        tokens = generate(model, ids, mask, pixels3)
        for i in range(3):
            row = ids[i][mask[i].bool()][None]
            alone = generate(model, row, torch.ones_like(row), pixels3[i : i + 1])
            assert torch.equal(alone[0, row.shape[1] :], tokens[i, ids.shape[1] :]), (name, i)


def test_text_only_row_is_untouched(model, pixels3):
    ids, mask = make_prompts([True, False, True], seed=7)
    text_row = ids[1][mask[1].bool()][None]
    with torch.no_grad():
        alone = generate(model, text_row, torch.ones_like(text_row))  # unmodified model, no image
    vtc.apply(model, "visionzip", visual_token_num=32)
    prepared = vtc.prepare_multimodal_inputs(model, ids, mask, pixels3[:2])
    assert torch.equal(prepared["input_ids"][1][prepared["attention_mask"][1].bool()], text_row[0])
    assert [(t["row"], t["visual_tokens"]) for t in prepared["compression_trace"]] == [(0, 32), (2, 32)]
    out = generate(model, ids, mask, pixels3[:2])
    assert torch.equal(out[1, ids.shape[1] :], alone[0, text_row.shape[1] :])
    only_text = generate(model, ids[1:2], mask[1:2])  # no pixel_values: plain generate
    assert torch.equal(only_text[0, ids.shape[1] :], alone[0, text_row.shape[1] :])


# -- per-instance lifecycle ----------------------------------------------------------------------------------------


def test_second_model_in_the_process_is_unaffected(model, pixels3):
    other = build_tiny_llava(0)  # same weights as `model`
    ids, mask = make_prompts([True, True, True], seed=9)
    before = generate(other, ids, mask, pixels3)
    vtc.apply(model, "fastervlm", visual_token_num=32)
    assert LlavaModel.get_image_features is ORIGINAL_GET_IMAGE_FEATURES
    assert LlavaForConditionalGeneration.generate is ORIGINAL_GENERATE
    assert is_patched(model) and not is_patched(other)
    out = features(other, pixels3)
    assert [f.shape[0] for f in out.pooler_output] == [NUM_PATCHES] * 3
    assert getattr(out, "compression_trace", None) is None
    assert torch.equal(generate(other, ids, mask, pixels3), before)
    assert vtc.last_trace(other) is None
    assert [f.shape[0] for f in features(model, pixels3).pooler_output] == [32] * 3
    assert not torch.equal(generate(model, ids, mask, pixels3), before)
    vtc.remove(model)
    assert torch.equal(generate(model, ids, mask, pixels3), before)


def test_apply_replace_remove_and_none(model, pixels3):
    vtc.apply(model, "fastervlm", visual_token_num=16)
    assert vtc.apply(model, "vtc-cls", visual_token_num=24) is model
    assert [t["visual_tokens"] for t in features(model, pixels3).compression_trace] == [24] * 3
    assert vtc.remove(model) is model and not is_patched(model)
    assert vtc.remove(model) is model  # idempotent
    vtc.apply(model, "pool", visual_token_num=16)
    vtc.apply(model, "none")
    assert not is_patched(model) and vtc.last_trace(model) is None
    from llava.compression.methods.divprune import DivPruneConfig

    vtc.apply(model, DivPruneConfig(visual_token_num=12))
    assert [t["visual_tokens"] for t in features(model, pixels3).compression_trace] == [12] * 3
    with pytest.raises(vtc.CompressionConfigError):
        vtc.apply(model, DivPruneConfig(visual_token_num=12), visual_token_num=5)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("fastervlm", {"visual_token_num": 577}),
        ("fastervlm", {"visual_token_num": 0}),
        ("vtc-cls", {"start_layer": 23}),
        ("vtc-cls", {"ensemble": "median"}),
        ("pool", {"visual_token_num": 58}),
        ("none", {"visual_token_num": 5}),
        ("unknown", {}),
    ],
)
def test_invalid_apply_raises_before_touching_the_model(model, name, kwargs):
    with pytest.raises(vtc.CompressionConfigError):
        vtc.apply(model, name, **kwargs)
    assert not is_patched(model)
    vtc.apply(model, "fastervlm", visual_token_num=8)
    with pytest.raises(vtc.CompressionConfigError):
        vtc.apply(model, name, **kwargs)
    assert vtc.applied_config(model).to_dict()["visual_token_num"] == 8  # the previous method stays


def test_geometry_is_read_from_the_model(shared_model):
    geo = vtc.model_geometry(shared_model)
    assert (geo.num_patches, geo.grid, geo.vision_layers, geo.llm_layers, geo.vision_feature_layer) == (
        576,
        (24, 24),
        24,
        2,
        -2,
    )
    assert geo.feature_layer == 22
    assert shared_model.config.image_token_id == IMAGE_TOKEN_ID
