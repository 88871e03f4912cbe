"""Each in-LLM method's ``token_schedule`` is what the engine really does: the traced per-layer visual token counts
of the tiny model equal the schedule the method reports (the one ``llava.bench.flops`` counts)."""

from __future__ import annotations

import pytest
import torch

import llava.compression as vtc
from llava.compression.registry import Stage, available_methods, get_method
from tests.llm.conftest import NUM_VISUAL, batch, geometry

# arguments that fit the 4-layer tiny model (36 visual tokens), several per method
SCHEDULES = {
    "fastv": [dict(fastv_k=2, fastv_r=0.5), dict(fastv_k=1, visual_token_num=7), dict(fastv_k=3, fastv_r=0.9)],
    "pdrop": [
        dict(pdrop_layers="1,2,3", pdrop_lambda=0.5),
        dict(pdrop_layers="1,3", pdrop_lambda=0.4),
        dict(pdrop_layers="1,2", visual_token_num=20),
    ],
    "sparsevlm": [
        dict(sparsevlm_layers="0,1", sparsevlm_counts="18,8"),
        dict(sparsevlm_layers="1", sparsevlm_counts="10"),
        dict(sparsevlm_layers="0,2", sparsevlm_counts="30,3", sparsevlm_recycle=False),
    ],
    "dart": [dict(dart_k=1, visual_token_num=16), dict(dart_k=2, visual_token_num=24)],
    "ficoco-l": [
        dict(ficoco_start_layer=1, visual_token_num=16),
        dict(ficoco_start_layer=2, ficoco_r=9),
        dict(ficoco_start_layer=2, visual_token_num=10, ficoco_reference_quirks=True),
    ],
}
CASES = [(name, i) for name, variants in SCHEDULES.items() for i in range(len(variants))]


def test_every_in_llm_method_is_covered():
    in_llm = {name for name in available_methods() if get_method(name).stages == (Stage.LLM,)}
    assert in_llm == set(SCHEDULES)


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}-{i}" for n, i in CASES])
@torch.inference_mode()
def test_traced_per_layer_counts_equal_the_token_schedule(model, name, variant):
    ids, mask, kw, _ = batch([(4, True, 12), (2, True, 14)])
    vtc.apply(model, name, **SCHEDULES[name][variant])
    model(input_ids=ids, attention_mask=mask, **kw)
    trace = vtc.last_trace(model)  # the engine's per-row trace of the last prefill (as tests/llm/test_engine.py)
    expected = vtc.applied_config(model).token_schedule(geometry())
    assert expected[0] == NUM_VISUAL and expected[-1] < NUM_VISUAL  # the case really prunes
    assert [row["visual_tokens_per_layer"] for row in trace] == [expected, expected]
