"""FiCoCo-L and FiCoCo-VL through the in-LLM engine on a tiny LLaVA (SDPA, DynamicCache, left padding)."""

from __future__ import annotations

import pytest
import torch

import llava.compression as vtc
from llava.compression.families import decoder_pruning
from llava.compression.registry import CompressionConfigError, ModelGeometry
from tests.merging.conftest import GEN, IMAGE_TOKEN_ID, LLM_LAYERS, NUM_PATCHES, make_pixels, make_prompts

LEFT_PADDED = [(3, True, 5), (7, True, 2), (1, False, 9)]  # image rows at different offsets + a text-only row

LLM = {
    "ficoco-l": {"ficoco_start_layer": 1, "visual_token_num": 16},
    "ficoco-l-quirks": {"ficoco_start_layer": 2, "visual_token_num": 10, "ficoco_reference_quirks": True},
    "ficoco-l-r": {"ficoco_start_layer": 2, "ficoco_r": 9},
    "ficoco-vl": {"ficoco_vision_start_layer": 2, "ficoco_llm_start_layer": 2, "visual_token_num": 12},
}


def _apply(model, key: str):
    name = "ficoco-vl" if key == "ficoco-vl" else "ficoco-l"
    return vtc.apply(model, name, **LLM[key])


def _inputs(model, specs, seed=0):
    """Left-padded prompts and the encoded images (as the evaluation path passes them: ``mm_encoder_outputs``)."""
    ids, mask = make_prompts(specs, seed)
    n_img = sum(1 for _, img, _ in specs if img)
    if not n_img:
        return ids, mask, {}
    prepared = vtc.prepare_multimodal_inputs(model, ids, mask, make_pixels(n_img, seed + 1))
    kw = {"mm_encoder_outputs": prepared["mm_encoder_outputs"]}
    return prepared["input_ids"], prepared["attention_mask"], kw


def uncached_greedy(model, ids, mask, kw, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding without a cache: every step recomputes the merged forward on prompt + generated tokens
    (scoring prompt pinned to the original prompt, generate()'s position ids)."""
    prompt_length = ids.shape[1]
    tokens, logits = [], []
    with decoder_pruning.pin_prompt(model, prompt_length):
        for _ in range(n):
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            last = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw).logits[
                :, -1
            ]
            last[:, IMAGE_TOKEN_ID] = float("-inf")  # as generate's suppress_tokens
            nxt = last.argmax(-1)
            tokens.append(nxt)
            logits.append(last)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1), logits


def generate(model, ids, mask, kw, **extra):
    return model.generate(input_ids=ids, attention_mask=mask, **GEN, **kw, **extra)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("ficoco-l", {"ficoco_r": 0, "ficoco_start_layer": 1}),
        ("ficoco-vl", {"ficoco_r": 0, "ficoco_vision_start_layer": 0, "ficoco_llm_start_layer": 1}),
    ],
)
@torch.inference_mode()
def test_r0_is_bit_equal_to_no_method(model, method, kw):
    ids, mask = make_prompts(LEFT_PADDED)
    pixels = make_pixels(2, seed=1)
    args = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_scores=True)
    ref = model.generate(**args, return_dict_in_generate=True, **GEN)
    vtc.apply(model, method, **kw)
    out = model.generate(**args, return_dict_in_generate=True, **GEN)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        assert torch.equal(a, b)
    counts = [t["visual_tokens_per_layer"] for t in decoder_pruning.last_trace(model)]
    assert counts == [[NUM_PATCHES] * LLM_LAYERS] * 2 + [[0] * LLM_LAYERS]


@pytest.mark.parametrize("key", list(LLM))
@torch.inference_mode()
def test_cached_generate_equals_uncached_recomputation(model, key):
    _apply(model, key)
    ids, mask, kw = _inputs(model, LEFT_PADDED[:2])
    cached = generate(model, ids, mask, kw, output_scores=True, return_dict_in_generate=True)
    trace = decoder_pruning.last_trace(model)
    tokens, logits = uncached_greedy(model, ids, mask, kw, GEN["max_new_tokens"])
    assert torch.equal(cached.sequences[:, ids.shape[1] :], tokens)
    for a, b in zip(cached.scores, logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(t["visual_tokens_per_layer"][-1] < t["visual_tokens_per_layer"][0] for t in trace)


@pytest.mark.parametrize("key", list(LLM))
@torch.inference_mode()
def test_batch_equals_single_rows(model, key):
    _apply(model, key)
    ids, mask, kw = _inputs(model, LEFT_PADDED)
    batched = generate(model, ids, mask, kw)[:, ids.shape[1] :]
    traces = decoder_pruning.last_trace(model)
    image = 0
    for r, spec in enumerate(LEFT_PADDED):
        one_ids, one_mask = _row_prompt(r)
        one_kw = {}
        if spec[1]:
            pix = make_pixels(2, seed=1)[image : image + 1]
            prepared = vtc.prepare_multimodal_inputs(model, one_ids, one_mask, pix)
            one_ids, one_mask = prepared["input_ids"], prepared["attention_mask"]
            one_kw = {"mm_encoder_outputs": prepared["mm_encoder_outputs"]}
            image += 1
        single = generate(model, one_ids, one_mask, one_kw)[:, one_ids.shape[1] :]
        assert torch.equal(single[0], batched[r]), f"row {r}"
        assert (
            decoder_pruning.last_trace(model)[0]["visual_tokens_per_layer"] == traces[r]["visual_tokens_per_layer"]
        )


def _row_prompt(r: int):
    """Row ``r`` of the left-padded batch alone (same random tokens as in the batch)."""
    ids, mask = make_prompts(LEFT_PADDED, seed=0)
    keep = mask[r].bool()
    return ids[r, keep][None], mask[r, keep][None]


@torch.inference_mode()
def test_budget_and_schedule_are_traced(model):
    _apply(model, "ficoco-l")  # layers 1, 2, 3 merge 64 -> 16: 16 per layer
    ids, mask, kw = _inputs(model, LEFT_PADDED)
    generate(model, ids, mask, kw)
    trace = decoder_pruning.last_trace(model)
    assert trace[0]["visual_tokens_per_layer"] == [64, 48, 32, 16]
    assert trace[0]["ficoco_llm_merges_per_layer"] == [16, 16, 16] and trace[0]["ficoco_llm_start_layer"] == 1
    assert trace[2]["visual_tokens_per_layer"] == [0] * LLM_LAYERS  # the text-only row is untouched
    _apply(model, "ficoco-l-r")  # r = 9 in layers 2, 3
    generate(model, ids, mask, kw)
    assert decoder_pruning.last_trace(model)[0]["visual_tokens_per_layer"] == [64, 64, 55, 46]


@torch.inference_mode()
def test_ficoco_vl_llm_sees_the_encoder_count(model):
    _apply(model, "ficoco-vl")  # encoder 64 -> (64 + 12 + 1) // 2 = 38, then LLM layers 2, 3: 38 -> 12
    ids, mask = make_prompts(LEFT_PADDED)
    pixels = make_pixels(2, seed=1)
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **GEN)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    vision = vtc.last_trace(model)
    assert [t["visual_tokens"] for t in vision] == [38, 38]
    assert vision[0]["vision_merge_layers"] == [2, 3, 4, 5, 6]
    llm = decoder_pruning.last_trace(model)
    assert [t["visual_tokens_per_layer"] for t in llm] == [[38, 38, 25, 12]] * 2 + [[0] * LLM_LAYERS]
    assert (
        vtc.make_config("ficoco-vl", ModelGeometry(), visual_token_num=64).to_dict()["vision_token_num"]
        == 320
    )
    vtc.remove(model)
    assert "forward" not in model.model.language_model.__dict__ and "generate" not in model.__dict__


@torch.inference_mode()
def test_quirks_change_the_merge(model):
    ids, mask, kw = _inputs(model, LEFT_PADDED[:1])
    vtc.apply(model, "ficoco-l", ficoco_start_layer=1, visual_token_num=8)
    paper = generate(model, ids, mask, kw, output_scores=True, return_dict_in_generate=True).scores[0]
    vtc.apply(model, "ficoco-l", ficoco_start_layer=1, visual_token_num=8, ficoco_reference_quirks=True)
    quirks = generate(model, ids, mask, kw, output_scores=True, return_dict_in_generate=True).scores[0]
    assert not torch.allclose(paper, quirks)


def test_invalid_llm_arguments(model):
    with pytest.raises(CompressionConfigError, match="ficoco-start-layer"):
        vtc.apply(model, "ficoco-l")  # default start layer 4 does not exist in a 4-layer LLM
    with pytest.raises(CompressionConfigError, match="ficoco-r"):
        vtc.apply(model, "ficoco-l", ficoco_start_layer=1, ficoco_r=30)
    with pytest.raises(CompressionConfigError, match="exceeds"):
        vtc.apply(
            model,
            "ficoco-vl",
            ficoco_vision_start_layer=2,
            ficoco_llm_start_layer=1,
            visual_token_num=40,
            ficoco_vision_token_num=30,
        )
    g = ModelGeometry()
    c = vtc.make_config("ficoco-l", g)
    assert c.prune_layers(g) == tuple(range(4, 32)) and c.visual_token_num == 64
    assert sum(c.per_layer(576, 28)) == 512


@pytest.mark.parametrize("key", ["ficoco-l", "ficoco-l-quirks", "ficoco-vl"])
@torch.inference_mode()
def test_queries_are_captured_not_recomputed(model, key):
    """Layer K-1's queries come from its own q_proj output (one call per layer at prefill), with the same result as
    recomputing them; the capture hooks are per instance and go with remove()."""
    _apply(model, key)
    lm = model.model.language_model
    state = decoder_pruning._state(lm)
    assert state.query_layers == tuple(k - 1 for k in state.layers)
    ids, mask, kw = _inputs(model, LEFT_PADDED)
    calls = [0] * LLM_LAYERS
    counters = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(lm.layers)
    ]
    try:
        captured = generate(model, ids, mask, kw, output_scores=True, return_dict_in_generate=True)
        trace = decoder_pruning.last_trace(model)
        assert calls == [GEN["max_new_tokens"]] * LLM_LAYERS  # the prefill + 4 decode steps: no extra q_proj call
        assert state.captured_queries is None  # nothing kept after the prefill
        query_layers, state.query_layers = state.query_layers, ()  # fall back to recomputing q_proj
        recomputed = generate(model, ids, mask, kw, output_scores=True, return_dict_in_generate=True)
        state.query_layers = query_layers
    finally:
        for h in counters:
            h.remove()
    assert torch.equal(captured.sequences, recomputed.sequences)
    assert decoder_pruning.last_trace(model) == trace
    for a, b in zip(captured.scores, recomputed.scores):
        assert torch.equal(a, b)
    assert any(layer.self_attn.q_proj._forward_hooks for layer in lm.layers)
    vtc.remove(model)
    assert not any(layer.self_attn.q_proj._forward_hooks for layer in lm.layers)
