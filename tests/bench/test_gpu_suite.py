"""The GPU suite's CPU mode (what CI can run): the issue's command end to end with every column of the table and sane
values, the in-place random fill, the time-limit skipping and the error rows of the harness it drives."""

import json

import pytest
import torch

from llava.bench import flops as F
from llava.bench import gpu_suite as S
from llava.bench import latency as L
from llava.bench.geometries import get_geometry

COLUMNS = ["method", "budget", "B", "LLM tokens", "avg vis/layer", "vision ms", "overhead ms (% base, % full depth)",
           "prefill ms", "TTFT ms", "TTFT speedup (ideal)", "prefill speedup (ideal)", "% of ideal prefill",
           "decode tok/s", "peak MB", "KV MB (formula)"]
TEXT = F.TEXT_BEFORE_IMAGE + 25


def _table(markdown: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def test_cpu_command_every_column(tmp_path, capsys):
    out, md = tmp_path / "suite.json", tmp_path / "suite.md"
    rc = S.main(["--device", "cpu", "--layers", "2", "--methods", "none,fastervlm,fastv", "--tokens", "64",
                 "--out", str(out), "--markdown", str(md)])
    assert rc == 0
    text = md.read_text()
    assert text in capsys.readouterr().out
    header, cells = _table(text)
    assert header == COLUMNS
    assert [(c[0], c[1], c[2]) for c in cells] == [("none", "", "1"), ("fastervlm", "64", "1"), ("fastv", "64", "1")]
    assert all(len(c) == len(COLUMNS) and all(v for v in c[2:]) for c in cells)  # every cell filled
    assert "flash_attention_2: not installed" in text or "**flash_attention_2**" in text

    doc = json.loads(out.read_text())
    meta = doc["meta"]
    assert meta["status"] == "complete" and meta["skipped"] == [] and meta["errors"] == []
    assert meta["machine"]["torch"] == torch.__version__ and meta["machine"]["dtype"] == "fp32"
    assert meta["machine"]["device_name"].startswith("CPU") and meta["machine"]["transformers"]
    assert meta["geometry"]["llm_layers"] == 2 and meta["full_llm_layers"] == 32
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"none", "fastervlm", "fastv"}
    for r in rows.values():
        assert r["attn_implementation"] == "sdpa"
        assert r["vision_ms"] > 0 and r["prefill_ms"] > 0 and r["ttft_ms"] > r["prefill_ms"] and r["decode_tok_s"] > 0
        assert r["overhead_ms"] >= 0 and r["peak_mb"] >= 0
        assert r["kv_mb"] == pytest.approx(r["kv_mb_formula"])
        low, high = r["ttft_ms_range"]
        assert low <= r["ttft_ms"] <= high
    assert rows["none"]["overhead_ms"] == 0 and rows["fastervlm"]["overhead_ms"] > 0 and rows["fastv"]["overhead_ms"] > 0
    # kept-token counts are the budget: FasterVLM before the LLM, FastV after its layer K
    assert rows["none"]["visual_tokens"] == 576 and rows["none"]["llm_input_tokens"] == 576 + TEXT
    assert rows["fastervlm"]["visual_tokens"] == 64 and rows["fastervlm"]["llm_input_tokens"] == 64 + TEXT
    assert rows["fastv"]["traced_visual_tokens_per_layer"] == rows["fastv"]["visual_tokens_per_layer"] == [576, 64]
    assert rows["fastervlm"]["kv_mb"] < rows["fastv"]["kv_mb"] < rows["none"]["kv_mb"]
    assert rows["fastervlm"]["ttft_speedup_ideal"] > 1 and rows["none"]["ttft_speedup"] == 1


def test_fill_random_is_deterministic_and_distinct():
    g = get_geometry("tiny")
    a, b = (S.build_on_device(g, torch.float32, "cpu", seed=3) for _ in range(2))
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
        assert torch.isfinite(p).all(), name
    params = {name: p.detach() for name, p in a.named_parameters()}
    q = params["model.language_model.layers.0.self_attn.q_proj.weight"]
    k = params["model.language_model.layers.0.self_attn.k_proj.weight"]
    assert not torch.equal(q, k) and not torch.equal(q[0], q[1]) and 0.015 < float(q.std()) < 0.025
    assert torch.equal(params["model.language_model.norm.weight"], torch.ones_like(q[0, : g.llm_hidden]))
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.inference_mode():
        logits = a.model.language_model(input_ids=ids).last_hidden_state
    assert torch.isfinite(logits).all()


def _tiny_settings(**changes) -> L.Settings:
    return L.Settings(repeats=1, warmup=0, new_tokens=2, text_tokens=60, shared_tower=False, keep_going=True,
                      skip_when_late=True, rerun_baseline=False, **changes)


def test_harness_error_rows_and_time_limit_skips(monkeypatch):
    """A method that raises is an error row (the sweep goes on); past the deadline the rest is skipped and recorded;
    ``on_row`` sees every row as it comes."""
    g = get_geometry("tiny").replace(text_tokens=60)
    model = S.build_on_device(g, torch.float32, "cpu")
    original = L.MethodRunner.run

    def failing(self):
        if self.config.name == "fastervlm":
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self)

    monkeypatch.setattr(L.MethodRunner, "run", failing)
    seen = []
    with torch.inference_mode():
        res = L.run_benchmark(model, g, ["none", "fastervlm", "fastv"], [32], _tiny_settings(), log=lambda m: None,
                              on_row=lambda rows, notes: seen.append(len(rows)))
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["fastervlm"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert rows["fastv"]["prefill_ms"] > 0 and rows["fastv"]["ttft_speedup"] > 0
    assert seen[:3] == [1, 2, 3]
    assert "| fastervlm | 32 | 1 | error: RuntimeError: CUDA out of memory" in L.markdown(res)

    # a deadline that has passed after the first timed run: everything after it is skipped, not measured
    with torch.inference_mode():
        late = L.run_benchmark(model, g, ["none", "fastv", "visionzip"], [32], _tiny_settings(max_seconds=1e-9),
                               log=lambda m: None)
    # nothing to estimate from before the first timed run of a method: none and fastv are measured, visionzip not
    assert [r.get("skipped", "")[:10] for r in late["rows"]] == ["", "", "time limit"]
    assert "prefill_ms" in late["rows"][1] and "prefill_ms" not in late["rows"][2]


def test_bad_arguments_one_line(capsys):
    assert S.main(["--device", "cpu", "--attn", "eager"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --attn") and "\n" not in err
    assert S.main(["--device", "cpu", "--methods", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_failure_outside_a_setting_keeps_the_json(tmp_path, monkeypatch):
    """An error the sweep cannot attribute to one setting stops it with status 'failed (...)' in the JSON and
    markdown, exit code 1, no traceback."""
    out = tmp_path / "suite.json"

    def broken_inputs(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    monkeypatch.setattr(L, "make_inputs", broken_inputs)
    rc = S.main(["--device", "cpu", "--model-config", "tiny", "--methods", "none", "--out", str(out),
                 "--markdown", str(tmp_path / "suite.md")])
    assert rc == 1
    meta = json.loads(out.read_text())["meta"]
    assert meta["status"] == "failed (RuntimeError: CUDA error: an illegal memory access was encountered)"
    assert meta["attention"]["sdpa"].startswith("stopped: failed")
    assert "(failed (RuntimeError" in (tmp_path / "suite.md").read_text()
