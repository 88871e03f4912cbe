"""ToMe and FiCoCo-V inside the CLIP encoder of a tiny LLaVA (SDPA, fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

import llava.compression as vtc
from llava.compression import primitives
from llava.compression.methods.ficoco import FiCoCoVConfig
from llava.compression.methods.tome import ToMeConfig
from llava.compression.registry import CompressionConfigError
from tests.merging.conftest import FEATURE_LAYER, GEN, NUM_PATCHES, make_pixels, make_prompts

# small-model settings: FiCoCo-V merges in encoder layers 2..6, ToMe in 0..6
VISION = {
    "tome": {},
    "tome-raster": {"tome_token_order": "raster"},
    "ficoco-v": {"ficoco_start_layer": 2},
    "ficoco-v-quirks": {"ficoco_start_layer": 2, "ficoco_reference_quirks": True},
    "ficoco-v-sized": {"ficoco_start_layer": 2, "ficoco_size_weighted": True, "ficoco_local_penalty": False},
}


def _apply(model, key: str, **kw):
    name = "ficoco-v" if key.startswith("ficoco-v") else key.split("-")[0]
    return vtc.apply(model, name, **{**VISION[key], **kw})


@torch.inference_mode()
def features(model, pixels):
    return model.model.get_image_features(pixel_values=pixels)


@pytest.fixture(scope="module")
def pixels():
    return make_pixels(3, seed=1)


@pytest.mark.parametrize(
    "method,kw", [("tome", {"tome_r": 0}), ("ficoco-v", {"ficoco_r": 0, "ficoco_start_layer": 0})]
)
def test_r0_is_identical_to_no_method(model, pixels, method, kw):
    ids, mask = make_prompts([(3, True, 5), (6, True, 2)])
    with torch.inference_mode():
        ref = features(model, pixels[:2])
        ref_out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels[:2], **GEN)
    vtc.apply(model, method, **kw)
    out = features(model, pixels[:2])
    for a, b in zip(out.pooler_output, ref.pooler_output):
        assert torch.equal(a, b)
    with torch.inference_mode():
        gen = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels[:2], **GEN)
    assert torch.equal(gen, ref_out)
    assert [t["visual_tokens"] for t in out.compression_trace] == [NUM_PATCHES] * 2


@pytest.mark.parametrize("key", list(VISION))
@pytest.mark.parametrize("budget", [1, 16, 40, 63])
def test_budget_is_reached_exactly_and_traced(model, pixels, key, budget):
    _apply(model, key, visual_token_num=budget)
    out = features(model, pixels)
    assert [f.shape for f in out.pooler_output] == [(budget, 64)] * 3
    config = vtc.applied_config(model)
    for i, trace in enumerate(out.compression_trace):
        assert trace["visual_tokens"] == budget
        assert len(trace["kept_indices"]) == budget
        assert trace["kept_indices"] == sorted(set(trace["kept_indices"]))  # raster order, distinct
        assert trace["vision_tokens_per_layer"][-1] == budget
        assert sum(trace["vision_merges_per_layer"]) == NUM_PATCHES - budget
        assert max(trace["vision_merge_layers"]) <= FEATURE_LAYER
        assert trace["vision_merges_per_layer"] == [
            r for r in config.per_layer(vtc.model_geometry(model)) if r > 0
        ]
        sizes, groups = out.token_sizes[i], out.token_groups[i]
        torch.testing.assert_close(sizes.sum(), torch.tensor(float(NUM_PATCHES)))  # every patch accounted for
        assert groups.shape == (NUM_PATCHES,) and int(groups.min()) >= 0 and int(groups.max()) == budget - 1
        origins = out.token_origins[i]  # the patch each output token started as, in output order
        assert sorted(origins.tolist()) == trace["kept_indices"]
        assert torch.equal(groups[origins], torch.arange(budget))  # a survivor is the main holder of itself
        assert torch.equal(torch.bincount(groups, minlength=budget).float(), sizes)  # groups = what sizes count
        if key.startswith("ficoco-v") or key == "tome-raster":
            assert origins.tolist() == trace["kept_indices"]  # raster order


def test_tome_official_order_reaches_the_llm_and_differs_from_raster(model, pixels):
    vtc.apply(model, "tome", visual_token_num=16)
    official = features(model, pixels)
    vtc.apply(model, "tome", visual_token_num=16, tome_token_order="raster")
    raster = features(model, pixels)
    assert [t["tome_token_order"] for t in official.compression_trace] == ["official"] * 3
    assert any(o.tolist() != sorted(o.tolist()) for o in official.token_origins)  # not raster order
    assert [t["kept_indices"] for t in official.compression_trace] != [
        t["kept_indices"] for t in raster.compression_trace
    ]
    # the LLM gets the encoder's feature-layer patch tokens in the encoder's order
    with torch.inference_mode():
        projected = model.model.multi_modal_projector(official.hidden_states[-2][:, 1:])
    for feats, expected in zip(official.pooler_output, projected):
        torch.testing.assert_close(feats, expected)


def test_ficoco_r_and_start_layer_directly(model, pixels):
    vtc.apply(model, "ficoco-v", ficoco_r=5, ficoco_start_layer=3)  # layers 3..6 -> 64 - 4 * 5
    trace = features(model, pixels).compression_trace[0]
    assert trace["vision_merge_layers"] == [3, 4, 5, 6] and trace["vision_merges_per_layer"] == [5] * 4
    assert trace["visual_tokens"] == 44 and trace["ficoco_vision_start_layer"] == 3
    vtc.apply(model, "ficoco-v", ficoco_r=20, visual_token_num=30, ficoco_start_layer=2)  # r until T
    trace = features(model, pixels).compression_trace[0]
    assert trace["vision_merges_per_layer"] == [20, 14] and trace["visual_tokens"] == 30
    vtc.apply(model, "tome", tome_r=4)  # ToMe's constant schedule over layers 0..6
    trace = features(model, pixels).compression_trace[0]
    assert trace["vision_merges_per_layer"] == [4] * 7 and trace["visual_tokens"] == 36


@pytest.mark.parametrize("key", ["tome", "ficoco-v", "ficoco-v-quirks"])
def test_batch_equals_single_images(model, pixels, key):
    _apply(model, key, visual_token_num=20)
    batched = features(model, pixels)
    for i in range(3):
        single = features(model, pixels[i : i + 1])
        assert single.compression_trace[0]["kept_indices"] == batched.compression_trace[i]["kept_indices"]
        torch.testing.assert_close(single.pooler_output[0], batched.pooler_output[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["tome", "ficoco-v-sized"])
def test_every_merge_conserves_the_size_weighted_token_sum(model, pixels, key, monkeypatch):
    cls = ToMeConfig if key == "tome" else FiCoCoVConfig
    real_merge = cls.merge
    checked = []

    def checking_merge(self, x, attention, tokens, r):
        before = (x[:, 1:] * tokens.sizes[:, 1:, None]).sum(1)
        total = tokens.sizes.sum(1)
        y = real_merge(self, x, attention, tokens, r)
        torch.testing.assert_close(
            (y[:, 1:] * tokens.sizes[:, 1:, None]).sum(1), before, atol=1e-3, rtol=1e-4
        )
        torch.testing.assert_close(tokens.sizes.sum(1), total)
        assert torch.equal(y[:, 0], x[:, 0])  # the [CLS] token is never merged into
        checked.append(r)
        return y

    monkeypatch.setattr(cls, "merge", checking_merge)
    _apply(model, key, visual_token_num=10)
    features(model, pixels)
    assert sum(checked) == NUM_PATCHES - 10


def test_quirks_and_paper_variants_differ(model, pixels):
    _apply(model, "ficoco-v", visual_token_num=20)
    paper = features(model, pixels).compression_trace
    _apply(model, "ficoco-v-quirks", visual_token_num=20)
    quirks = features(model, pixels).compression_trace
    assert [t["kept_indices"] for t in paper] != [t["kept_indices"] for t in quirks]
    vtc.apply(model, "ficoco-v", visual_token_num=20, ficoco_start_layer=2, ficoco_local_penalty=False)
    no_penalty = features(model, pixels).compression_trace
    assert [t["kept_indices"] for t in paper] != [t["kept_indices"] for t in no_penalty]


def test_tower_is_left_untouched_and_remove_restores(model, pixels):
    tower = model.model.vision_tower
    with torch.inference_mode():
        ref = tower(pixels, output_hidden_states=True).hidden_states
    _apply(model, "ficoco-v", visual_token_num=20)
    features(model, pixels)
    assert tower.config._attn_implementation == "sdpa"
    for layer in tower.encoder.layers:  # per-call layer forwards and q/k hooks are gone
        assert "forward" not in layer.__dict__
        assert not layer.self_attn.q_proj._forward_hooks and not layer.self_attn.k_proj._forward_hooks
    with torch.inference_mode():
        again = tower(pixels, output_hidden_states=True).hidden_states  # the tower itself does not merge
    assert all(torch.equal(a, b) for a, b in zip(ref, again))
    vtc.remove(model)
    assert "get_image_features" not in model.model.__dict__ and "generate" not in model.__dict__
    assert [f.shape[0] for f in features(model, pixels).pooler_output] == [NUM_PATCHES] * 3


def test_generate_with_merged_tokens_shrinks_the_prompt(model, pixels):
    ids, mask = make_prompts([(3, True, 5), (6, True, 2)])
    vtc.apply(model, "tome", visual_token_num=12)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels[:2], **GEN)
    assert out.shape == (2, ids.shape[1] + GEN["max_new_tokens"])
    assert torch.equal(out[:, : ids.shape[1]], ids)  # the caller's prompts come back
    assert [t["visual_tokens"] for t in vtc.last_trace(model)] == [12, 12]


def test_invalid_arguments_are_rejected_before_any_work(model):
    with pytest.raises(CompressionConfigError, match="feature layer"):
        vtc.apply(model, "ficoco-v", ficoco_start_layer=7)
    with pytest.raises(CompressionConfigError, match="--visual-token-num"):
        vtc.apply(model, "ficoco-v", visual_token_num=65, ficoco_start_layer=2)
    with pytest.raises(CompressionConfigError, match="ficoco-r"):
        vtc.apply(model, "ficoco-v", ficoco_r=20, ficoco_start_layer=2)  # 5 layers x 20 > 64
    with pytest.raises(CompressionConfigError, match="not reachable"):
        vtc.apply(model, "tome", visual_token_num=1, tome_r=3)
    with pytest.raises(CompressionConfigError, match="takes no argument"):
        vtc.apply(model, "tome", ficoco_r=3)
    assert "get_image_features" not in model.model.__dict__


def test_default_budget_and_geometry_of_llava_1_5():
    from llava.compression.registry import ModelGeometry

    g = ModelGeometry()  # CLIP-L/336, 24 layers, features from layer 22
    v = vtc.make_config("ficoco-v", g)
    assert v.visual_token_num == 64 and v.merge_layers(g) == list(range(12, 23))
    assert v.per_layer(g) == [47] * 6 + [46] * 5
    assert vtc.make_config("ficoco-v", g, ficoco_r=42).final_count(g) == 576 - 11 * 42  # the released r
    t = vtc.make_config("tome", g, visual_token_num=192)
    assert sum(t.per_layer(g)) == 384 and len(t.per_layer(g)) == 23
    assert primitives.merge_schedule(576, 23, target=192) == t.per_layer(g)


@pytest.mark.parametrize("key", ["tome", "ficoco-v"])
@pytest.mark.parametrize("args", [{"visual_token_num": 16}, {"visual_token_num": 40}, {"ficoco_r": 3, "tome_r": 3}])
def test_traced_encoder_counts_equal_the_token_schedule(model, pixels, key, args):
    """The in-encoder methods' ``encoder_token_schedule`` / ``token_schedule`` (what llava.bench.flops counts) are
    what the encoder really does, layer by layer."""
    own = {k: v for k, v in args.items() if not k.startswith("ficoco_" if key == "tome" else "tome_")}
    _apply(model, key, **own)
    out = features(model, pixels)
    geometry = vtc.model_geometry(model)
    config = vtc.applied_config(model)
    schedule = config.encoder_token_schedule(geometry)  # (attention, MLP) tokens per layer, [CLS] included
    assert len(schedule) == geometry.vision_layers and schedule[0][0] == NUM_PATCHES + 1
    merging = [layer for layer, (a, m) in enumerate(schedule) if m < a]
    assert merging  # the case really merges
    for trace in out.compression_trace:
        assert trace["vision_merge_layers"] == merging
        assert trace["vision_tokens_per_layer"] == [schedule[layer][1] - 1 for layer in merging]
        assert [trace["visual_tokens"]] * geometry.llm_layers == config.token_schedule(geometry)


def test_copied_clip_layer_forward_is_pinned_to_the_installed_transformers():
    """``_merging_layer_forward`` copies ``CLIPEncoderLayer.forward``: the installed source must be the one copied."""
    import hashlib
    import importlib
    import inspect
    import textwrap

    from llava.compression.families.clip_merging import COPIED_FORWARD

    dotted, pinned = COPIED_FORWARD
    module_name, class_name, function_name = dotted.rsplit(".", 2)
    function = getattr(getattr(importlib.import_module(module_name), class_name), function_name)
    digest = hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()
    assert digest == pinned, (
        f"{dotted} changed in the installed transformers: re-sync _merging_layer_forward in "
        "llava/compression/families/clip_merging.py with it, then update COPIED_FORWARD's hash"
    )
