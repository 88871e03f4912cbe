"""Qwen2.5-VL on the tiny checkpoint: loading, keep-all exactness, batching, M-RoPE positions after pruning,
cached vs uncached decoding after in-LLM pruning, refusals, and the attention guard around every run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

import llava.compression as vtc
from llava.compression.families import available_families, decoder_pruning, family_for
from llava.compression.families import qwen2_5_vl as family
from llava.compression.registry import CompressionConfigError
from tests.qwen.conftest import attention_guard, greedy, make_batch

# in-LLM methods with arguments that fit the 4-layer tiny decoder
LLM_METHODS = {
    "fastv": dict(fastv_k=2, fastv_r=0.5),
    "pdrop": dict(pdrop_layers="1,2,3", pdrop_lambda=0.5),
    "sparsevlm": dict(sparsevlm_layers="1,2", sparsevlm_counts="20,10"),
    "dart": dict(dart_k=2, visual_token_num=8),
    "ficoco-l": dict(ficoco_start_layer=1, visual_token_num=16),
}
PRE_LLM_METHODS = {
    "divprune": dict(visual_token_num=16),
    "random": dict(visual_token_num=12),
    "pool": dict(visual_token_num=16),
}


# -- loading ---------------------------------------------------------------------------------------------------------


def test_tiny_checkpoint_loads_through_the_builder(tiny_qwen, loaded, images):
    from llava.model.builder import checkpoint_family, load_pretrained_model, read_model_geometry

    tokenizer, model, processor = loaded
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert model.llava_load_info.family == checkpoint_family(tiny_qwen) == "qwen2_5_vl"
    tower = model.config.vision_config
    windowed = [i for i in range(tower.depth) if i not in tower.fullatt_block_indexes]
    assert tower.fullatt_block_indexes and windowed  # both kinds of vision blocks
    for token in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
        assert len(tokenizer(token).input_ids) == 1
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    assert family_for(model).name == "qwen2.5-vl"
    # the checkpoint's pixel range, and --min-pixels / --max-pixels overriding it
    grid = processor(images=images[1], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid == [1, 16, 16]
    geometry = read_model_geometry(tiny_qwen)
    assert geometry.has_cls is False and geometry.num_patches == 144 == family.model_geometry(model).num_patches
    _, _, small, _ = load_pretrained_model(tiny_qwen, device="cpu", max_pixels=28 * 28 * 16)
    assert small(images=images[1], return_tensors="pt")["image_grid_thw"][0].tolist() == [1, 8, 8]
    assert read_model_geometry(tiny_qwen, max_pixels=28 * 28 * 16).num_patches == 16


def test_family_is_listed_with_what_applies(capsys):
    from llava.compression.families.__main__ import main as list_families

    assert "qwen2.5-vl" in available_families()
    assert list_families(["--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    qwen = rows["qwen2.5-vl"]
    assert sorted(qwen["methods"]) == ["dart", "divprune", "fastv", "ficoco-l", "pdrop", "pool", "random", "sparsevlm"]
    assert qwen["provides"] == []


# -- refusals ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fastervlm", "vtc-cls", "prumerge", "prumerge+", "visionzip"])
def test_cls_methods_are_refused_with_one_clear_error(qwen, method):
    _, model, _ = qwen
    with pytest.raises(CompressionConfigError) as err:
        vtc.apply(model, method)
    message = str(err.value)
    assert "\n" not in message and "qwen2.5-vl" in message and "[CLS]" in message
    assert vtc.get_method(method).name in message
    assert vtc.applied_config(model).name == "none"


def test_compact_positions_are_refused(qwen):
    _, model, _ = qwen
    with pytest.raises(CompressionConfigError, match="M-RoPE"):
        vtc.apply(model, "pdrop", pdrop_layers="1,2", llm_positions="compact")
    vtc.apply(model, "pdrop", pdrop_layers="1,2")  # the default on Qwen: original (t, h, w) positions
    assert vtc.applied_config(model).llm_positions == "original"


# -- keep-all and batching ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def test_keep_all_equals_no_method_bit_for_bit(qwen, images):
    tokenizer, model, processor = qwen
    batch = make_batch(tokenizer, processor, images, [0, 1, 2])
    reference = model(**batch).logits
    expected = greedy(model, batch)
    with attention_guard(model):
        for method in ("divprune", "random", "pool"):
            vtc.apply(model, method, visual_token_num=64)  # no image has more than 64 merged tokens
            assert torch.equal(greedy(model, batch), expected), method
            prepared = vtc.prepare_multimodal_inputs(model, batch["input_ids"], batch["attention_mask"],
                                                     batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
            assert torch.equal(prepared["input_ids"], batch["input_ids"])
            inputs = {k: v for k, v in prepared.items() if k not in ("rope_deltas", "compression_trace")}
            assert torch.equal(model(**inputs).logits, reference), method
        vtc.apply(model, "fastv", fastv_k=2, fastv_r=0.0)  # an in-LLM method that keeps every token
        assert torch.equal(greedy(model, batch), expected)


@pytest.mark.parametrize("method", ["divprune", "random", "pool", "fastv", "sparsevlm", "dart"])
@torch.inference_mode()
def test_batch_of_three_sizes_equals_single_runs(qwen, images, method):
    tokenizer, model, processor = qwen
    vtc.apply(model, method, **{**PRE_LLM_METHODS, **LLM_METHODS}[method])
    with attention_guard(model):
        batched = greedy(model, make_batch(tokenizer, processor, images, [0, 1, 2]))
        singles = [greedy(model, make_batch(tokenizer, processor, images, [i])) for i in range(3)]
    assert torch.equal(batched, torch.cat(singles))


@torch.inference_mode()
def test_pre_llm_trace_and_pooling_grid_per_image(qwen, images):
    tokenizer, model, processor = qwen
    vtc.apply(model, "pool", visual_token_num=16)
    greedy(model, make_batch(tokenizer, processor, images, [0, 1, 2]), n=1)
    traces = vtc.last_trace(model)
    assert [t["grid"] for t in traces] == [[2, 11], [8, 8], [4, 5]]
    # 16 does not factor within 2 x 11: the largest grid of at most 16 cells closest to its aspect (2 x 8)
    assert [t["visual_tokens"] for t in traces] == [16, 16, 16]
    assert [t["pool_grid"] for t in traces] == [[2, 8], [4, 4], [4, 4]]
    assert [t["row"] for t in traces] == [0, 1, 2]


# -- M-RoPE positions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["divprune", "random", "pool"])
@torch.inference_mode()
def test_kept_tokens_keep_their_mrope_positions(qwen, images, method):
    tokenizer, model, processor = qwen
    batch = make_batch(tokenizer, processor, images, [0, 1, 2])
    full, full_deltas = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                   batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    vtc.apply(model, method, **PRE_LLM_METHODS[method])
    prepared = vtc.prepare_multimodal_inputs(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                             image_grid_thw=batch["image_grid_thw"])
    ids, mask, positions = prepared["input_ids"], prepared["attention_mask"].bool(), prepared["position_ids"]
    image_id = model.config.image_token_id
    for row, trace in enumerate(prepared["compression_trace"]):
        original = torch.nonzero(batch["input_ids"][row] == image_id).flatten()
        kept_original = original[torch.tensor(trace["kept_indices"])]
        if method == "pool":  # each pooled token stands at its window's centre
            kept_original = original[torch.tensor(sorted(trace["kept_indices"]))]
        kept_now = torch.nonzero(ids[row] == image_id).flatten()
        assert torch.equal(positions[1:, row, kept_now], full[:, row, kept_original])
        # text keeps its positions: everything after the image continues where it would have
        after_now = kept_now[-1] + 1
        after_full = original[-1] + 1
        assert torch.equal(positions[1:, row, after_now:], full[:, row, after_full:])
        # and the text before it is untouched
        start_now = int((~mask[row]).sum())
        start_full = int((batch["attention_mask"][row] == 0).sum())
        assert torch.equal(positions[1:, row, start_now : kept_now[0]], full[:, row, start_full : original[0]])
        # the text row is what generate builds from the mask; rope_deltas continue after the last position
        assert torch.equal(positions[0, row, mask[row]], torch.arange(int(mask[row].sum())))
        assert int(prepared["mm_token_type_ids"][row].sum()) == len(kept_now) == trace["visual_tokens"]
        last = int(full[:, row].max())
        assert int(prepared["rope_deltas"][row]) == last + 1 - int(mask[row].sum())
    # the shrunk rows are shorter by the dropped tokens, their last position is the same: deltas grow by the drop
    dropped = batch["attention_mask"].sum(dim=1) - prepared["attention_mask"].sum(dim=1)
    assert torch.equal(prepared["rope_deltas"].flatten() - full_deltas.flatten(), dropped)


@pytest.mark.parametrize("method", list(LLM_METHODS))
@torch.inference_mode()
def test_cached_generation_equals_uncached_recomputation(qwen, images, method):
    """Greedy ``generate`` (KV cache, positions advanced by generate) == a loop of full pruned forwards without a
    cache, each with the M-RoPE positions of prompt + generated tokens."""
    tokenizer, model, processor = qwen
    batch = make_batch(tokenizer, processor, images, [0, 1, 2])
    vtc.apply(model, method, **LLM_METHODS[method])
    prepared = family.prepare_multimodal_inputs(model, batch["input_ids"], batch["attention_mask"],
                                                batch["pixel_values"], batch["image_grid_thw"])
    inputs = {k: v for k, v in prepared.items() if k not in ("rope_deltas", "compression_trace")}
    n = 5
    with attention_guard(model, allow_method_maps=method == "ficoco-l"):
        cached = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_scores=True,
                                return_dict_in_generate=True)
        trace = cached.llm_compression_trace
        ids, mask, positions = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
        tokens, scores = [], []
        with decoder_pruning.pin_prompt(model, ids.shape[1]):
            for _ in range(n):
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                               mm_encoder_outputs=inputs["mm_encoder_outputs"], use_cache=False).logits[:, -1]
                token = logits.argmax(-1)
                tokens.append(token)
                scores.append(logits)
                ids = torch.cat([ids, token[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = torch.cat([positions, positions[..., -1:] + 1], dim=-1)
    assert torch.equal(cached.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(tokens, dim=1))
    for a, b in zip(cached.scores, scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    counts = [t["visual_tokens_per_layer"] for t in trace]
    assert [c[0] for c in counts] == [22, 64, 20] and all(c[-1] < c[0] for c in counts)


@torch.inference_mode()
def test_in_llm_pruning_keeps_the_positions_of_kept_tokens(qwen, images):
    """The engine hands layers from the pruning layer on the cos/sin of each kept token's own (t, h, w): the
    position embeddings a pruned layer receives equal the model's rotary embedding at the kept tokens' original
    M-RoPE positions."""
    tokenizer, model, processor = qwen
    batch = make_batch(tokenizer, processor, images, [0, 2])
    vtc.apply(model, "fastv", fastv_k=2, fastv_r=0.5)
    prepared = family.prepare_multimodal_inputs(model, batch["input_ids"], batch["attention_mask"],
                                                batch["pixel_values"], batch["image_grid_thw"])
    inputs = {k: v for k, v in prepared.items() if k not in ("rope_deltas", "compression_trace")}
    received = {}
    layer = model.model.language_model.layers[2]
    handle = layer.register_forward_pre_hook(
        lambda module, args, kwargs: received.update(kwargs), with_kwargs=True, prepend=False)
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    trace = decoder_pruning.last_trace(model)
    lm = model.model.language_model
    mask = inputs["attention_mask"].bool()
    cos, _ = received["position_embeddings"]
    for row in range(2):
        image = torch.nonzero(inputs["input_ids"][row] == model.config.image_token_id).flatten()
        kept_visual = image[torch.tensor(trace[row]["llm_kept_indices"]["2"])]
        text = torch.nonzero(mask[row] & (inputs["input_ids"][row] != model.config.image_token_id)).flatten()
        kept = torch.sort(torch.cat([kept_visual, text])).values
        expected_cos, _ = lm.rotary_emb(cos, inputs["position_ids"][1:, row : row + 1, kept])
        assert torch.equal(cos[row, -kept.numel():], expected_cos[0])
