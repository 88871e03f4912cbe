"""Static shapes where the budget is fixed: FasterVLM (pre-LLM), FastV and PyramidDrop (in-LLM) generate with
transformers' ``StaticCache`` exactly as with the default ``DynamicCache``; methods whose counts depend on the data
refuse it.

With FastV the pruned prefill writes the kept tokens' keys/values into the first slots of the pruned layers' static
cache (layers ``< K`` hold the whole prompt), and decoding continues after them with the kept tokens' original
RoPE positions.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import CompileConfig, StaticCache

import llava.compression as vtc
from tests.llm.conftest import checkpoint_inputs

GEN = {"max_new_tokens": 5, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}


def _trace(out):
    return getattr(out, "llm_compression_trace", None) or out.compression_trace


@pytest.mark.parametrize(
    ("method", "options", "batch_size"),
    [
        ("fastervlm", {"visual_token_num": 64}, 1),
        ("fastervlm", {"visual_token_num": 64}, 2),
        ("fastv", {"visual_token_num": 64}, 1),
        ("fastv", {"visual_token_num": 64}, 2),
        ("pdrop", {"pdrop_layers": "1,2,3", "visual_token_num": 192}, 2),  # staged drops, compact positions
    ],
    ids=["fastervlm@64-batch1", "fastervlm@64-batch2", "fastv@64-batch1", "fastv@64-batch2", "pdrop@192-batch2"],
)
@torch.inference_mode()
def test_static_cache_generation_equals_dynamic(checkpoint_model, method, options, batch_size):
    inputs = checkpoint_inputs(checkpoint_model, batch_size)  # batch 2: rows of different lengths, left-padded
    vtc.apply(checkpoint_model, method, **options)
    dynamic = checkpoint_model.generate(**inputs, **GEN)
    static = checkpoint_model.generate(**inputs, cache_implementation="static", **GEN)
    assert torch.equal(static.sequences, dynamic.sequences)
    for step_static, step_dynamic in zip(static.logits, dynamic.logits, strict=True):
        torch.testing.assert_close(step_static, step_dynamic, rtol=1e-4, atol=1e-4)
    assert _trace(static) == _trace(dynamic)


@torch.inference_mode()
def test_fastv_fills_the_first_static_slots_of_the_pruned_layers(checkpoint_model):
    inputs = checkpoint_inputs(checkpoint_model, 2)
    vtc.apply(checkpoint_model, "fastv", visual_token_num=64)  # K = 2
    prompt = inputs["input_ids"].shape[1]
    text_config = checkpoint_model.config.text_config
    cache = StaticCache(config=text_config, max_cache_len=prompt + GEN["max_new_tokens"])
    static = checkpoint_model.generate(**inputs, past_key_values=cache, **GEN)
    dynamic = checkpoint_model.generate(**inputs, **GEN)
    assert torch.equal(static.sequences, dynamic.sequences)
    written = GEN["max_new_tokens"] - 1  # the last generated token is never fed back
    lengths = [int(layer.cumulative_length) for layer in cache.layers]
    pruned = prompt - (576 - 64)  # the longer row: its text, 64 kept visual tokens; the other row is left-filled
    assert lengths == [prompt + written] * 2 + [pruned + written] * (text_config.num_hidden_layers - 2)
    # what the pruned layers hold after their prompt slots is exactly what the dynamic cache holds
    # (generate() with a DynamicCache returns it on .past_key_values)
    for k in range(2, text_config.num_hidden_layers):
        torch.testing.assert_close(
            cache.layers[k].keys[:, :, : pruned + written], dynamic.past_key_values.layers[k].keys, rtol=1e-4, atol=1e-5
        )
        assert not cache.layers[k].keys[:, :, pruned + written :].any()  # the slots after them are untouched


@pytest.mark.parametrize(
    ("method", "options", "reason"),
    [
        ("sparsevlm", {"sparsevlm_layers": "1", "sparsevlm_counts": "64"}, "recycles a data-dependent number"),
        ("dart", {"dart_k": 1, "visual_token_num": 64}, "depends on how many text tokens follow the image"),
    ],
)
@torch.inference_mode()
def test_data_dependent_methods_refuse_a_static_cache(checkpoint_model, method, options, reason):
    inputs = checkpoint_inputs(checkpoint_model, 1)
    vtc.apply(checkpoint_model, method, **options)
    with pytest.raises(TypeError, match=f"^{method} cannot use a StaticCache: .*{reason}"):
        checkpoint_model.generate(**inputs, cache_implementation="static", **GEN)


INDUCTOR = pytest.param(
    "inductor", marks=pytest.mark.skipif(
        os.environ.get("VTC_TEST_COMPILE") != "1",
        reason="inductor code generation of decode takes minutes on 2 CPU cores: run with VTC_TEST_COMPILE=1",
    ),
)


@pytest.mark.parametrize("backend", ["eager", INDUCTOR])  # eager: dynamo's graph capture of the step, no codegen
@pytest.mark.parametrize("method", ["fastervlm", "fastv"], ids=["fastervlm@64", "fastv@64"])
@torch.inference_mode()
def test_compiled_static_decode_equals_dynamic(checkpoint_model, method, backend):
    inputs = checkpoint_inputs(checkpoint_model, 2)
    vtc.apply(checkpoint_model, method, visual_token_num=64)
    dynamic = checkpoint_model.generate(**inputs, **GEN)
    config = CompileConfig(mode="default", dynamic=False, backend=backend)
    config._compile_all_devices = True  # transformers compiles decode by itself only on accelerators
    try:
        compiled = checkpoint_model.generate(**inputs, cache_implementation="static", compile_config=config, **GEN)
        assert "_compiled_call" in checkpoint_model.__dict__  # decode ran through torch.compile
    finally:
        checkpoint_model.__dict__.pop("_compiled_call", None)
        checkpoint_model.__dict__.pop("_last_compile_config", None)
    assert torch.equal(compiled.sequences, dynamic.sequences)
    # a compiled step may order its fp32 reductions differently: up to ~3e-4 seen on logits of magnitude ~10
    for step_compiled, step_dynamic in zip(compiled.logits, dynamic.logits, strict=True):
        torch.testing.assert_close(step_compiled, step_dynamic, rtol=1e-4, atol=1e-3)
    assert _trace(compiled) == _trace(dynamic)
