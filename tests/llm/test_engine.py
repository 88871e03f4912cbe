"""The in-LLM pruning engine: exactness with nothing dropped, cache vs no cache, batching, scores, isolation."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaModel, StaticCache

import llava.compression as vtc
from llava.compression.families import decoder_pruning
from llava.compression.llm.base import LLMPruningMethod, RowSelection
from tests.llm.conftest import (
    IMAGE_TOKEN_ID,
    NUM_VISUAL,
    batch,
    build_llava,
    eager_copy,
    geometry,
    greedy_generate,
    mm,
)

# every method, with arguments that fit the 4-layer tiny model and prune at 1..3 depths
METHODS = {
    "fastv": dict(fastv_k=2, fastv_r=0.5),
    "fastv-compact": dict(fastv_k=1, visual_token_num=7, llm_positions="compact"),
    "pdrop": dict(pdrop_layers="1,2,3", pdrop_lambda=0.5),
    "pdrop-original": dict(pdrop_layers="1,3", pdrop_lambda=0.4, llm_positions="original"),
    "sparsevlm": dict(sparsevlm_layers="0,1", sparsevlm_counts="18,8"),
    "sparsevlm-original": dict(sparsevlm_layers="1", sparsevlm_counts="10", llm_positions="original"),
    "dart": dict(dart_k=1, visual_token_num=16),
}

LEFT_PADDED = [(3, True, 5), (7, True, 2), (1, False, 9)]  # image rows at different offsets + a text-only row


def _apply(model, key: str):
    return vtc.apply(model, key.split("-")[0], **METHODS[key])


def uncached_greedy(model, ids, mask, kw, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding without a cache: every step recomputes the pruned forward on prompt + generated tokens,
    with the scoring prompt pinned to the original prompt and generate()'s position ids."""
    prompt_length = ids.shape[1]
    tokens, logits = [], []
    with decoder_pruning.pin_prompt(model, prompt_length):
        for _ in range(n):
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            last = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw).logits[:, -1]
            last[:, IMAGE_TOKEN_ID] = float("-inf")  # generate() suppresses it (generation_config.suppress_tokens)
            nxt = last.argmax(-1)
            tokens.append(nxt)
            logits.append(last)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1), logits


# -- nothing dropped: bit-equal to the unmodified model --------------------------------------------------------------


@pytest.mark.parametrize("specs", [[(4, True, 6)], LEFT_PADDED], ids=["batch1", "batch3-left-padded"])
@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("fastv", dict(fastv_k=1, fastv_r=0.0)),
        ("fastv", dict(fastv_k=3, fastv_r=0.0)),
        ("pdrop", dict(pdrop_layers="1,2,3", pdrop_lambda=1.0)),
    ],
    ids=["fastv-k1", "fastv-k3", "pdrop-compact-3-stages"],
)
@torch.inference_mode()
def test_keep_all_is_bit_equal_to_unmodified(model, specs, method, kwargs):
    ids, mask, kw, _ = batch(specs)
    ref_logits = model(input_ids=ids, attention_mask=mask, **kw).logits
    ref = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, output_scores=True,
        return_dict_in_generate=True, **kw,
    )
    vtc.apply(model, method, **kwargs)
    logits = model(input_ids=ids, attention_mask=mask, **kw).logits
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, output_scores=True,
        return_dict_in_generate=True, **kw,
    )
    assert torch.equal(logits, ref_logits)  # every position, padding included
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        assert torch.equal(a, b)  # prefill and every decode step
    n_vis = [NUM_VISUAL if img else 0 for _, img, _ in specs]
    assert [t["visual_tokens_per_layer"] for t in decoder_pruning.last_trace(model)] == [[n] * 4 for n in n_vis]


# -- pruning: cached generate() == uncached recompute loop -----------------------------------------------------------


@pytest.mark.parametrize("specs", [[(4, True, 6)], LEFT_PADDED[:2]], ids=["batch1", "batch2-left-padded"])
@pytest.mark.parametrize("key", list(METHODS))
@torch.inference_mode()
def test_cached_generate_equals_uncached_pruned_loop(model, key, specs):
    ids, mask, kw, _ = batch(specs)
    _apply(model, key)
    cached = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, output_scores=True,
        return_dict_in_generate=True, **kw,
    )
    trace = decoder_pruning.last_trace(model)
    tokens, logits = uncached_greedy(model, ids, mask, kw, 6)
    assert torch.equal(cached.sequences[:, ids.shape[1] :], tokens)
    for a, b in zip(cached.scores, logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert trace is not None and len(trace) == len(specs)
    assert all(t["visual_tokens_per_layer"][0] == NUM_VISUAL for t in trace)
    assert all(t["visual_tokens_per_layer"][-1] < NUM_VISUAL for t in trace)


@torch.inference_mode()
def test_pruning_changes_the_answer_and_keeps_per_layer_cache_lengths(model):
    ids, mask, kw, _ = batch([(4, True, 6)])
    ref = greedy_generate(model, ids, mask, kw, 6)
    vtc.apply(model, "pdrop", pdrop_layers="1,3", pdrop_lambda=0.25)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                         return_dict_in_generate=True, **kw)
    assert not torch.equal(out.sequences[:, ids.shape[1] :], ref)
    cache = out.past_key_values
    t = ids.shape[1]
    kept1, kept2 = int(NUM_VISUAL * 0.25), int(NUM_VISUAL * 0.25**2)
    # prompt + 5 generated tokens are cached (the 6th is never fed back)
    assert [cache.get_seq_length(i) for i in range(4)] == [
        t + 5, t - NUM_VISUAL + kept1 + 5, t - NUM_VISUAL + kept1 + 5, t - NUM_VISUAL + kept2 + 5
    ]
    assert decoder_pruning.last_trace(model)[0]["visual_tokens_per_layer"] == [NUM_VISUAL, kept1, kept1, kept2]
    assert decoder_pruning.last_trace(model)[0]["avg_visual_tokens"] == (NUM_VISUAL + 2 * kept1 + kept2) / 4


# -- batching --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["fastv", "pdrop", "sparsevlm", "dart"])
@torch.inference_mode()
def test_batch_of_n_equals_n_single_runs(model, key):
    _apply(model, key)
    ids, mask, kw, _ = batch(LEFT_PADDED)
    batched = greedy_generate(model, ids, mask, kw, 6)
    traces = decoder_pruning.last_trace(model)
    # each row alone: same tokens, same prompt, same image features
    _, _, _, feats = batch(LEFT_PADDED)
    image_of_row = iter(feats)
    for r in range(len(LEFT_PADDED)):
        valid = mask[r].bool()
        row_ids, row_mask = ids[r : r + 1, valid], mask[r : r + 1, valid]
        has_image = LEFT_PADDED[r][1]
        row_kw = {"mm_encoder_outputs": mm([next(image_of_row)])} if has_image else {}
        single = greedy_generate(model, row_ids, row_mask, row_kw, 6)
        assert torch.equal(single[0], batched[r]), f"row {r}"
        assert decoder_pruning.last_trace(model)[0] == traces[r]
    assert traces[2]["visual_tokens_per_layer"] == [0, 0, 0, 0]  # the text-only row is untouched


@torch.inference_mode()
def test_beam_search_runs_and_trace_has_one_entry_per_input_row(model):
    ids, mask, kw, _ = batch(LEFT_PADDED[:2])
    vtc.apply(model, "fastv", fastv_k=2, fastv_r=0.75)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=3, do_sample=False, **kw)
    assert out.shape[0] == 2
    assert [t["visual_tokens_per_layer"] for t in out.llm_compression_trace] == [[36, 36, 9, 9]] * 2


# -- scores from q/k == eager attention weights ----------------------------------------------------------------------


class _Probe(LLMPruningMethod):
    """Records the attention rows the engine computes for the last prompt token, keeps everything."""

    name = "probe"

    def __init__(self, layers):
        self._layers = tuple(layers)
        self.rows: dict[tuple[int, str], torch.Tensor] = {}
        self.visual: list[torch.Tensor] = []

    def prune_layers(self, geometry):
        return self._layers

    def select(self, step):
        q = step.last_prompt_index()[:, None]
        self.rows[(step.layer, "prev")] = step.attention(step.layer - 1, q)[:, :, 0]
        self.rows[(step.layer, "own")] = step.attention(step.layer, q)[:, :, 0]
        self.visual = [step.visual_indices(r) for r in range(step.batch_size)]
        return [RowSelection(keep=torch.arange(v.numel())) for v in self.visual]


@pytest.mark.parametrize("use_cache", [True, False], ids=["keys-from-cache", "keys-recomputed"])
@torch.inference_mode()
def test_score_rows_match_eager_attention_weights(model, use_cache):
    ids, mask, kw, _ = batch(LEFT_PADDED)
    eager = eager_copy(model)
    attn = eager(input_ids=ids, attention_mask=mask, output_attentions=True, **kw).attentions  # per layer [B,H,T,T]
    probe = _Probe([1, 2, 3])
    decoder_pruning.apply(model, probe, geometry())
    model(input_ids=ids, attention_mask=mask, use_cache=use_cache, **kw)
    for k in (1, 2, 3):
        torch.testing.assert_close(probe.rows[(k, "prev")], attn[k - 1][:, :, -1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(probe.rows[(k, "own")], attn[k][:, :, -1], rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_visual_tokens_found_where_the_image_is(model):
    # a long "system prompt" precedes the image in one row, the image comes right after BOS in another
    specs = [(35, True, 12), (1, True, 3), (10, False, 10)]
    ids, mask, kw, _ = batch(specs)
    probe = _Probe([2])
    decoder_pruning.attach(model.model.language_model, probe, geometry(), image_token_id=IMAGE_TOKEN_ID)
    pre = model.model._forward_pre_hooks
    assert not pre  # attach() alone installs no hook: the decoder reads input_ids or a visual_mask argument
    try:
        lm = model.model.language_model
        embeds = model.model.get_input_embeddings()(ids)
        visual = ids == IMAGE_TOKEN_ID
        lm(inputs_embeds=embeds, attention_mask=mask, visual_mask=visual)
    finally:
        decoder_pruning.detach(model.model.language_model)
    for r, (pre_len, img, _) in enumerate(specs):
        pad = int((mask[r] == 0).sum())
        expected = torch.arange(pad + pre_len, pad + pre_len + NUM_VISUAL) if img else torch.arange(0)
        assert torch.equal(probe.visual[r], expected)
    # through apply(): the LlavaModel pre-hook finds them in input_ids, wherever they are
    vtc.apply(model, "fastv", fastv_k=1, visual_token_num=1)
    out = model(input_ids=ids, attention_mask=mask, **kw)
    # rows are left-filled to the longest pruned row (here row 0: 35 + 1 visual + 12 text tokens)
    assert out.logits.shape[1] == ids.shape[1] - NUM_VISUAL + 1
    # a plain forward leaves the trace with the engine (one last_trace), nothing written into the model
    assert "llm_compression_trace" not in model.__dict__
    assert [t["visual_tokens_per_layer"] for t in decoder_pruning.last_trace(model)] == [
        [NUM_VISUAL, 1, 1, 1], [NUM_VISUAL, 1, 1, 1], [0, 0, 0, 0]
    ]


# -- isolation, errors -----------------------------------------------------------------------------------------------


@torch.inference_mode()
def test_second_model_in_process_is_unaffected(model):
    other = build_llava(0)
    ids, mask, kw, _ = batch([(4, True, 6)])
    before = greedy_generate(other, ids, mask, kw, 5)
    vtc.apply(model, "fastv", fastv_k=1, fastv_r=0.9)
    assert type(model.model.language_model).forward is LlamaModel.forward  # nothing patched at class level
    assert "forward" not in other.model.language_model.__dict__
    assert not other.model._forward_pre_hooks
    assert torch.equal(greedy_generate(other, ids, mask, kw, 5), before)
    assert getattr(other, "llm_compression_trace", None) is None
    pruned = greedy_generate(model, ids, mask, kw, 5)
    vtc.remove(model)
    assert "forward" not in model.model.language_model.__dict__
    assert "generate" not in model.__dict__
    assert torch.equal(greedy_generate(model, ids, mask, kw, 5), before)
    assert not torch.equal(pruned, before)


@torch.inference_mode()
def test_static_cache_is_refused_with_a_clear_error(model):
    # a method with data-dependent counts (fixed-count FastV takes a static cache: tests/llm/test_static_cache.py)
    ids, mask, kw, _ = batch([(4, True, 6)])
    vtc.apply(model, "sparsevlm", sparsevlm_layers="1", sparsevlm_counts="3")
    cache = StaticCache(config=model.config.text_config, max_cache_len=128)
    with pytest.raises(TypeError, match="sparsevlm cannot use a StaticCache: it recycles a data-dependent number"):
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, **kw)


@torch.inference_mode()
def test_output_hidden_states_still_works(model):
    ids, mask, kw, _ = batch([(4, True, 6)])
    vtc.apply(model, "fastv", fastv_k=2, visual_token_num=6)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
    t = ids.shape[1]
    assert [h.shape[1] for h in out.hidden_states] == [t, t, t, t - NUM_VISUAL + 6, t - NUM_VISUAL + 6]


class _MergeOnly(LLMPruningMethod):
    """Row 0 keeps every visual token and gains 3 merged copies; other rows keep everything."""

    name = "merge-only"

    def prune_layers(self, geometry):
        return (2,)

    def select(self, step):
        out = []
        for r in range(step.batch_size):
            vis = step.visual_indices(r)
            merged = step.hidden[r, vis[:3]] if r == 0 else None
            out.append(RowSelection(keep=torch.arange(vis.numel()), merged=merged))
        return out


@torch.inference_mode()
def test_rows_growing_past_the_input_length_are_filled_with_blank_slots(model):
    # row 0 (no padding) grows by 3 merged tokens: row 1 must be left-filled past its own padding + dropped tokens
    ids, mask, kw, _ = batch([(9, True, 5), (2, True, 3)])
    ref = model(input_ids=ids, attention_mask=mask, **kw).logits[:, -1]
    ref_tokens = greedy_generate(model, ids, mask, kw, 4)
    decoder_pruning.apply(model, _MergeOnly(), geometry())
    out = model(input_ids=ids, attention_mask=mask, **kw).logits
    assert out.shape[1] == ids.shape[1] + 3
    torch.testing.assert_close(out[1, -1], ref[1], rtol=1e-5, atol=1e-5)  # row 1 is unchanged
    assert decoder_pruning.last_trace(model)[0]["visual_tokens_per_layer"] == [36, 36, 39, 39]
    tokens = greedy_generate(model, ids, mask, kw, 4)
    assert torch.equal(tokens[1], ref_tokens[1])
    assert torch.equal(tokens, uncached_greedy(model, ids, mask, kw, 4)[0])


# -- the seams: kwargs through the layers, RoPE from the model, one layout per cache --------------------------------


@pytest.mark.parametrize("use_cache", [True, False], ids=["keys-from-cache", "keys-recomputed"])
@torch.inference_mode()
def test_scores_rotate_with_the_models_own_rope(model, use_cache, monkeypatch):
    """The engine rotates queries/keys with the decoder's own ``apply_rotary_pos_emb`` and the cos/sin its layers
    receive: give the family another rotation and the scores still match its attention weights."""
    from transformers.models.llama import modeling_llama

    llama_rope = modeling_llama.apply_rotary_pos_emb

    def reverse_rope(q, k, cos, sin, unsqueeze_dim=1):  # rotate by -theta: a decoder whose RoPE is not Llama's
        return llama_rope(q, k, cos, -sin, unsqueeze_dim)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", reverse_rope)
    ids, mask, kw, _ = batch(LEFT_PADDED)
    attn = eager_copy(model)(input_ids=ids, attention_mask=mask, output_attentions=True, **kw).attentions
    probe = _Probe([1, 2, 3])
    decoder_pruning.apply(model, probe, geometry())
    model(input_ids=ids, attention_mask=mask, use_cache=use_cache, **kw)
    for k in (1, 2, 3):
        torch.testing.assert_close(probe.rows[(k, "prev")], attn[k - 1][:, :, -1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(probe.rows[(k, "own")], attn[k][:, :, -1], rtol=1e-4, atol=1e-5)


def _step(model, ids, mask, cache, kw=None):
    """One greedy forward with ``cache`` (prefill when empty), generate()'s position ids; returns next tokens."""
    q = ids.shape[1]
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, -q:]
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, **(kw or {})
    ).logits[:, -1]
    logits[:, IMAGE_TOKEN_ID] = float("-inf")
    return logits.argmax(-1)


def _decode(model, ids, mask, cache, steps):
    tokens = []
    nxt = ids
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        nxt = _step(model, nxt[:, None] if nxt.dim() == 1 else nxt, mask, cache)
        tokens.append(nxt)
    return torch.stack(tokens, dim=1), mask


@torch.inference_mode()
def test_interleaved_generations_each_decode_with_their_own_cache(model):
    """Two prompts prefilled one after the other, then decoded alternately: each cache keeps the pruned layout it
    was filled with (nothing of the first prefill is overwritten by the second)."""
    from transformers import DynamicCache

    _apply(model, "pdrop")
    a_ids, a_mask, a_kw, _ = batch(LEFT_PADDED)
    b_ids, b_mask, b_kw, _ = batch([(4, True, 6)], seed=3)

    def alone(ids, mask, kw):
        cache = DynamicCache(config=model.config.text_config)
        first = _step(model, ids, mask, cache, kw)
        rest, _ = _decode(model, first, mask, cache, 3)
        return torch.cat([first[:, None], rest], dim=1)

    a_alone, b_alone = alone(a_ids, a_mask, a_kw), alone(b_ids, b_mask, b_kw)
    a_cache, b_cache = DynamicCache(config=model.config.text_config), DynamicCache(config=model.config.text_config)
    a_first = _step(model, a_ids, a_mask, a_cache, a_kw)
    b_first = _step(model, b_ids, b_mask, b_cache, b_kw)
    a_tokens, a_tokens_mask = [a_first], a_mask
    b_tokens, b_tokens_mask = [b_first], b_mask
    for _ in range(3):
        a_tokens_mask = torch.cat([a_tokens_mask, torch.ones_like(a_tokens_mask[:, :1])], dim=1)
        a_tokens.append(_step(model, a_tokens[-1][:, None], a_tokens_mask, a_cache))
        b_tokens_mask = torch.cat([b_tokens_mask, torch.ones_like(b_tokens_mask[:, :1])], dim=1)
        b_tokens.append(_step(model, b_tokens[-1][:, None], b_tokens_mask, b_cache))
    assert torch.equal(torch.stack(a_tokens, dim=1), a_alone)
    assert torch.equal(torch.stack(b_tokens, dim=1), b_alone)


@torch.inference_mode()
def test_the_decoder_forward_itself_runs_and_a_broken_seam_fails_loudly(model):
    """No forward is replaced (the decoder's own runs; the engine sits in hooks and its layers' kwargs); a decoder
    that stops passing its kwargs on to its layers makes the engine fail with a message, not silently not prune."""
    import types

    _apply(model, "fastv")
    lm = model.model.language_model
    assert "forward" not in lm.__dict__ and not any("forward" in layer.__dict__ for layer in lm.layers)
    ids, mask, kw, _ = batch(LEFT_PADDED)
    model(input_ids=ids, attention_mask=mask, **kw)  # works
    own_forward = type(lm).forward

    def forward_keeping_kwargs_to_itself(self, *args, **kwargs):
        kwargs.pop(decoder_pruning.CALL_KWARG, None)
        return own_forward(self, *args, **kwargs)

    lm.forward = types.MethodType(forward_keeping_kwargs_to_itself, lm)
    try:
        with pytest.raises(RuntimeError, match="did not pass its keyword arguments on to its decoder layers"):
            model(input_ids=ids, attention_mask=mask, **kw)
    finally:
        lm.__dict__.pop("forward")
