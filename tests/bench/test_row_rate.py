"""The row-rate measurement (``llava.bench.row_rate``) on the tiny geometry: one decoder layer timed per row count,
FLOPs from the shared formula, rates relative to the 636-row (unpruned LLaVA-1.5) reference."""

import json

from llava.bench import flops as F
from llava.bench import row_rate
from llava.bench.geometries import get_geometry


def test_rates_are_relative_to_the_unpruned_row_count(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert row_rate.main(["--model-config", "tiny", "--device", "cpu", "--dtype", "fp32", "--rows", "124,636,992",
                          "--repeats", "2", "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["reference_rows"] == 636
    rows = {r["rows"]: r for r in result["rows"]}
    assert set(rows) == {124, 636, 992}
    assert rows[636]["rate_vs_reference"] == 1.0
    geometry = get_geometry("tiny")
    for n, r in rows.items():
        assert r["layer_flops"] == F.llm_layer_flops(geometry, n)
        assert r["ms_min"] <= r["ms_median"] <= r["ms_max"]
        assert abs(r["tflops_per_s"] - r["layer_flops"] / (r["ms_median"] / 1000) / 1e12) < 1e-9
    table = capsys.readouterr().out
    assert "| 992 |" in table and "rate vs 636 rows" in table


def test_cuda_without_a_gpu_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert row_rate.main(["--device", "cuda"]) == 2
    assert "no GPU" in capsys.readouterr().err
