"""summarize: table from synthetic results files, baseline ratio, averages, CSV, FLOPs column, plot."""

import csv
import json
import sys
import types

import pytest

from llava.eval import summarize


def _write(root, bench_dir, bench, ckpt, method, tokens, headline, metric="accuracy", args=None):
    path = root / bench_dir / "results" / ckpt / method / f"{tokens}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": bench, "checkpoint": ckpt, "method": method, "method_args": args or {},
        "visual_tokens": tokens, "headline_metric": metric, "headline": headline, "metrics": {},
        "answers_file": "a.jsonl", "num_answers": 10}))
    return path


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "eval"
    _write(r, "pope", "pope", "llava-v1.5-7b", "none", 576, 85.0, "mean_f1")
    _write(r, "pope", "pope", "llava-v1.5-7b", "fastervlm", 144, 80.75, "mean_f1")   # 80.75 / 85 = 95 %
    _write(r, "pope", "pope", "llava-v1.5-7b", "fastervlm", 64, 68.0, "mean_f1")     # 68 / 85 = 80 %
    _write(r, "MME", "mme", "llava-v1.5-7b", "none", 576, 1500.0, "perception")
    _write(r, "MME", "mme", "llava-v1.5-7b", "fastervlm", 144, 1425.0, "perception")  # 95 %
    _write(r, "mm-vet", "mmvet", "llava-v1.5-7b", "none", 576, None, "gpt4_score")    # server-scored: no ratio
    # another checkpoint has its own baseline
    _write(r, "pope", "pope", "llava-v1.5-13b", "baseline", 576, 86.0, "mean_f1")
    _write(r, "pope", "pope", "llava-v1.5-13b", "fastervlm", 144, 86.0, "mean_f1")   # 100 %
    (r / "pope" / "results" / "junk.json").write_text("{not json")
    (r / "pope" / "results" / "other.json").write_text('{"some": "file"}')
    return r


def _row(rows, ckpt, bench, method, tokens):
    return next(x for x in rows if (x["checkpoint"], x["benchmark"], x["method"], x["visual_tokens"])
                == (ckpt, bench, method, tokens))


def test_table_and_baseline_ratio(root):
    records, warnings = summarize.collect(root)
    assert len(records) == 8 and len(warnings) == 2
    rows = summarize.build_rows(records)
    assert _row(rows, "llava-v1.5-7b", "pope", "fastervlm", 144)["ratio_to_baseline_pct"] == pytest.approx(95.0)
    assert _row(rows, "llava-v1.5-7b", "pope", "fastervlm", 64)["ratio_to_baseline_pct"] == pytest.approx(80.0)
    assert _row(rows, "llava-v1.5-7b", "pope", "none", 576)["ratio_to_baseline_pct"] == pytest.approx(100.0)
    assert _row(rows, "llava-v1.5-7b", "mme", "fastervlm", 144)["ratio_to_baseline_pct"] == pytest.approx(95.0)
    assert _row(rows, "llava-v1.5-7b", "mmvet", "none", 576)["ratio_to_baseline_pct"] is None
    assert _row(rows, "llava-v1.5-13b", "pope", "fastervlm", 144)["ratio_to_baseline_pct"] == pytest.approx(100.0)
    # order: checkpoint, benchmark (registry order), baseline first, then tokens descending
    seven_pope = [(r["method"], r["visual_tokens"]) for r in rows
                  if r["checkpoint"] == "llava-v1.5-7b" and r["benchmark"] == "pope"]
    assert seven_pope == [("none", 576), ("fastervlm", 144), ("fastervlm", 64)]
    # FasterVLM-style average over benchmarks: (95 + 95) / 2 for 7b fastervlm 144; 80 for 64 (pope only)
    avg = {(a["checkpoint"], a["method"], a["visual_tokens"]): a for a in summarize.average_ratios(rows)}
    assert avg[("llava-v1.5-7b", "fastervlm", 144)]["average_ratio_pct"] == pytest.approx(95.0)
    assert avg[("llava-v1.5-7b", "fastervlm", 144)]["benchmarks"] == "pope,mme"
    assert avg[("llava-v1.5-7b", "fastervlm", 64)]["average_ratio_pct"] == pytest.approx(80.0)
    md = summarize.markdown(rows, summarize.average_ratios(rows))
    assert "| llava-v1.5-7b | pope | fastervlm | 144 | mean_f1 | 80.75 | 95.00 |" in md


def test_cli_outputs(root, tmp_path, capsys):
    out, csv_path = tmp_path / "r.md", tmp_path / "r.csv"
    assert summarize.main(["--root", str(root), "--out", str(out), "--csv", str(csv_path)]) == 0
    assert "skipped" in capsys.readouterr().err
    assert "95.00" in out.read_text()
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 8 and set(summarize.COLUMNS) == set(rows[0])
    r = next(x for x in rows if x["method"] == "fastervlm" and x["visual_tokens"] == "64")
    assert float(r["ratio_to_baseline_pct"]) == pytest.approx(80.0)
    # LLaVA-1.5-7B with 64 visual tokens: 2.00 TFLOPs in the full convention (docs/benchmarks.md)
    assert float(r["tflops_per_sample"]) == pytest.approx(2.00, abs=0.01)
    assert summarize.main(["--root", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: results root not found")


def test_flops_column_when_available(root, monkeypatch):
    fake = types.ModuleType("llava.bench.flops")
    fake.prefill_flops = lambda visual_tokens, method=None: visual_tokens * 1e10  # 144 -> 1.44 TFLOPs
    monkeypatch.setitem(sys.modules, "llava.bench.flops", fake)
    rows = summarize.build_rows(summarize.collect(root)[0], summarize.flops_function())
    assert _row(rows, "llava-v1.5-7b", "pope", "fastervlm", 144)["tflops_per_sample"] == pytest.approx(1.44)


def test_flops_column_empty_without_module(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "llava.bench.flops", None)  # import fails
    assert summarize.flops_function() is None


def test_plot(root, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plot.png"
    assert summarize.main(["--root", str(root), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert summarize.main(["--root", str(root), "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_tflops_filled_for_a_run_label_with_a_knob(tmp_path):
    from llava.bench.flops import prefill_flops

    r = tmp_path / "eval"
    args = {"visual_token_num": 64, "start_layer": 22}
    # a results file written before the scorer recorded compression_method: the label names the method
    _write(r, "pope", "pope", "llava-v1.5-7b", "vtc-cls_start-layer-22", 64, 80.0, "mean_f1", args)
    rows = summarize.build_rows(summarize.collect(r)[0], summarize.flops_function())
    expected = prefill_flops(64, "vtc-cls", args, "llava-v1.5-7b") / 1e12
    assert _row(rows, "llava-v1.5-7b", "pope", "vtc-cls_start-layer-22", 64)["tflops_per_sample"] == pytest.approx(expected)


def test_tflops_use_the_recorded_compression_method(tmp_path):
    from llava.data import mini
    from llava.eval.benchmarks import score

    root = tmp_path / "eval"
    mini.generate(root, ["pope"])
    answers = mini.write_reference_answers(root, "pope")
    recs = [json.loads(line) for line in answers.read_text().splitlines()]
    for rec in recs:
        rec["metadata"] = {"method": "fastv", "method_args": {"visual_token_num": 64, "fastv_k": 3},
                           "visual_tokens": 576}
    answers.write_text("".join(json.dumps(rec) + "\n" for rec in recs))
    record = score("pope", answers, data_root=root, checkpoint="llava-v1.5-7b", method="fastv_fastv-k-3",
                   write_converted=False)
    assert record["compression_method"] == "fastv" and record["results_file"].endswith("fastv_fastv-k-3/64.json")
    rows = summarize.build_rows(summarize.collect(root)[0], summarize.flops_function())
    assert rows[0]["method"] == "fastv_fastv-k-3" and rows[0]["tflops_per_sample"] is not None


def test_skipped_inputs_are_counted(tmp_path, capsys):
    r = tmp_path / "eval"
    path = _write(r, "pope", "pope", "llava-v1.5-7b", "none", 576, 85.0, "mean_f1")
    _write(r, "pope", "pope", "llava-v1.5-7b", "fastervlm", 64, 80.0, "mean_f1")
    rec = json.loads(path.read_text())
    path.write_text(json.dumps(dict(rec, num_input_errors=3)))
    rows = summarize.build_rows(summarize.collect(r)[0])
    assert [row["skipped_inputs"] for row in rows] == [3, 0]
    md = summarize.markdown(rows, [])
    assert "| none | 576 | mean_f1 | 85.00 | 100.00 |  | 3 |" in md
    assert "3 answer(s) in 1 run(s) were skipped as unreadable inputs" in md
    assert summarize.main(["--root", str(r), "--out", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv")]) == 0
    assert "3 answer(s) in 1 run(s) were skipped" in capsys.readouterr().out
    assert [row["skipped_inputs"] for row in csv.DictReader(open(tmp_path / "t.csv"))] == ["3", "0"]


def test_help_describes_the_table(capsys):
    with pytest.raises(SystemExit):
        summarize.main(["--help"])
    out = capsys.readouterr().out
    assert "percentage of the baseline run" in out and "skipped" in out
    assert "keyword arguments" not in out and "``" not in out  # no implementation notes, no rst markup


def test_tflops_count_the_tokens_a_run_really_gave(tmp_path):
    """PruMerge+ at 192 under the VTC-CLS rule gives about 270 tokens: the FLOPs count those, not the label."""
    from llava.bench.flops import prefill_flops

    r = tmp_path / "eval"
    args = {"visual_token_num": 192}
    path = _write(r, "pope", "pope", "llava-v1.5-7b", "prumerge+", 192, 80.0, "mean_f1", args)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), visual_tokens_mean=270.4,
                                    compression_method="prumerge+")))
    fastv_args = {"visual_token_num": 64, "fastv_k": 3}
    path = _write(r, "pope", "pope", "llava-v1.5-7b", "fastv", 64, 80.0, "mean_f1", fastv_args)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), visual_tokens_mean=576.0,
                                    compression_method="fastv")))
    rows = summarize.build_rows(summarize.collect(r)[0], summarize.flops_function())
    prumerge = _row(rows, "llava-v1.5-7b", "pope", "prumerge+", 192)["tflops_per_sample"]
    assert prumerge == pytest.approx(prefill_flops(270, "prumerge+", args, "llava-v1.5-7b") / 1e12)
    assert prumerge != pytest.approx(prefill_flops(192, "prumerge+", args, "llava-v1.5-7b") / 1e12)
    fastv = _row(rows, "llava-v1.5-7b", "pope", "fastv", 64)["tflops_per_sample"]
    assert fastv == pytest.approx(prefill_flops(64, "fastv", fastv_args, "llava-v1.5-7b") / 1e12)
