"""Latency harness on the tiny geometry: the command end to end, per-layer counts and KV bytes against the formula,
and the attention guard (no method switches to eager attention or returns attention maps)."""

import json

import pytest
import torch

from llava.bench import flops as F
from llava.bench import latency as L
from llava.bench.geometries import get_geometry
from llava.compression.registry import Stage, available_methods, get_method

TEXT = 60


@pytest.fixture(scope="module")
def tiny():
    g = get_geometry("tiny").replace(text_tokens=TEXT)
    model = L.build_random_model(g, torch.float32, "cpu", seed=0)
    return g, model


def test_command_end_to_end(tmp_path, capsys):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = L.main(["--model-config", "tiny", "--methods", "none,fastervlm,fastv,tome", "--tokens", "64",
                 "--repeats", "1", "--warmup", "1", "--new-tokens", "2", "--dtype", "fp32",
                 "--out", str(out), "--markdown", str(md)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| fastervlm | 64 | 1 | 124 | 64 |" in text and "CPU settings: 1 repeat(s)" in text
    assert md.read_text() in text
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"none", "fastervlm", "fastv", "tome"}
    for r in rows.values():
        assert r["kv_mb"] == pytest.approx(r["kv_mb_formula"])  # measured cache == formula
        assert r["ttft_ms"] > 0 and r["prefill_ms"] > 0 and r["decode_tok_s"] > 0
        assert r["attention_check"]["eager_attention_calls"] == 0
        assert r["attention_check"]["returned_attention_weights"] == 0
    assert rows["fastervlm"]["ttft_speedup_ideal"] > 1 and "ttft_speedup" in rows["fastervlm"]
    assert rows["fastv"]["traced_visual_tokens_per_layer"] == rows["fastv"]["visual_tokens_per_layer"]
    assert rows["tome"]["llm_input_tokens"] == 64 + TEXT


def test_every_method_under_attention_guard(tiny):
    """Every registered method at a 192-token budget: SDPA stays on everywhere, no attention module returns weights,
    only FiCoCo builds an all-pairs (head-mean) attention map itself; the engine's per-layer visual counts and the
    measured KV cache equal :mod:`llava.bench.flops`'."""
    g, model = tiny
    settings = L.Settings(repeats=1, warmup=0, new_tokens=2, text_tokens=TEXT, shared_tower=False)
    inputs = L.make_inputs(model, g, 1, TEXT)
    checked = []
    for method in F.sweep_methods("all"):
        args = {} if method == "none" else F.budget_args(method, 192, 32, g.llm_layers)
        config = F.build_config(method, g, args)
        counts = F.token_counts(config, g, text_tokens=TEXT)
        runner = L.MethodRunner(model, g, config, inputs, settings)
        try:
            with L.attention_guard(model, g.patches_per_image, strict=True) as report:
                run = runner.run()
        finally:
            runner.close()
        assert report.ok, method
        if getattr(config, "budget_is_approximate", False):  # PruMerge+'s VTC-CLS rule: the count lands near 192
            assert abs(run.llm_tokens - TEXT - 192) < 192, method
            counts = F.token_counts(config, g, visual_tokens=run.llm_tokens - TEXT, text_tokens=TEXT)
        if report.square_maps:
            assert method.startswith("ficoco"), (method, report.square_maps[:3])
        if Stage.LLM in get_method(method).stages:
            assert run.visual_tokens_per_layer == counts.visual_tokens_per_layer, method
        assert run.llm_tokens == counts.visual_tokens + TEXT, method
        assert run.kv_bytes == F.kv_cache_bytes(counts, g, TEXT, bytes_per_value=4), method
        checked.append(method)
    assert set(checked) == set(available_methods())
    # the model is left unmodified
    assert L.F.build_config("none", g) is not None and model.config.text_config._attn_implementation == "sdpa"


def test_guard_catches_eager_attention(tiny):
    g, model = tiny
    pixels = L.make_inputs(model, g, 1, TEXT)[2]
    model.set_attn_implementation("eager")
    try:
        with pytest.raises(L.AttentionGuardError):
            with L.attention_guard(model, g.patches_per_image):
                model.model.vision_tower(pixels)
    finally:
        model.set_attn_implementation("sdpa")
    with L.attention_guard(model, g.patches_per_image) as report:
        model.model.vision_tower(pixels)
    assert report.ok and not report.square_maps


def test_plot_with_accuracy_panel(tmp_path):
    pytest.importorskip("matplotlib")
    root = tmp_path / "eval"
    for method, tokens, score in (("none", 576, 85.0), ("fastervlm", 64, 80.0)):
        path = root / "pope" / "results" / "llava-v1.5-7b" / method / f"{tokens}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "benchmark": "pope", "checkpoint": "llava-v1.5-7b", "method": method, "method_args": {},
            "visual_tokens": tokens, "headline_metric": "f1", "headline": score, "metrics": {}}))
    results = {"meta": {"model": "tiny"}, "rows": [
        {"method": "none", "budget": None, "batch_size": 1, "avg_visual_tokens": 576, "ttft_speedup": 1.0,
         "ttft_speedup_ideal": 1.0, "prefill_speedup": 1.0, "prefill_speedup_ideal": 1.0},
        {"method": "fastervlm", "budget": 64, "batch_size": 1, "avg_visual_tokens": 64, "ttft_speedup": 1.3,
         "ttft_speedup_ideal": 1.4, "prefill_speedup": 4.6, "prefill_speedup_ideal": 5.2},
    ]}
    assert len(L._accuracy_rows(str(root))) == 2
    out = tmp_path / "p.png"
    L.plot(results, str(out), str(root))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method, args", [("fastervlm", {"visual_token_num": 64}), ("tome", {"visual_token_num": 64})])
def test_harness_features_are_the_family_features(tiny, method, args):
    """The image features the harness times are the ones the LLaVA family itself gives with the method applied
    (pre-LLM: reduce-and-project; in-encoder: merging tower, then the projector)."""
    import llava.compression as vtc

    g, model = tiny
    settings = L.Settings(repeats=1, warmup=0, new_tokens=2, text_tokens=TEXT, shared_tower=False)
    inputs = L.make_inputs(model, g, 2, TEXT)
    config = F.build_config(method, g, args)
    runner = L.MethodRunner(model, g, config, inputs, settings)
    try:
        feats = runner.encode()[0]
    finally:
        runner.close()
    vtc.apply(model, config)
    try:
        with torch.no_grad():
            expected = model.model.get_image_features(pixel_values=inputs[2]).pooler_output
    finally:
        vtc.remove(model)
    assert [f.shape for f in feats] == [f.shape for f in expected] and len(feats) == 2
    assert all(torch.equal(a, b) for a, b in zip(feats, expected))


def test_harness_runs_the_family_stage_functions(tiny, monkeypatch):
    """The harness calls ``families.llava.reduce_and_project`` / ``families.clip_merging.encode_and_project`` (one
    implementation of reduce-and-project), not a copy of them."""
    from llava.compression.families import clip_merging
    from llava.compression.families import llava as family

    calls = []

    def counting(name, fn):
        def wrapper(*a, **kw):
            calls.append(name)
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(family, "reduce_and_project", counting("reduce", family.reduce_and_project))
    monkeypatch.setattr(clip_merging, "encode_and_project", counting("encode", clip_merging.encode_and_project))
    g, model = tiny
    settings = L.Settings(repeats=1, warmup=0, new_tokens=2, text_tokens=TEXT, shared_tower=False)
    inputs = L.make_inputs(model, g, 1, TEXT)
    for method, args in (("fastervlm", {"visual_token_num": 64}), ("tome", {"visual_token_num": 64})):
        runner = L.MethodRunner(model, g, F.build_config(method, g, args), inputs, settings)
        try:
            runner.encode()
        finally:
            runner.close()
    assert calls == ["reduce", "encode"]
