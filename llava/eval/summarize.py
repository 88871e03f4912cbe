"""Gather every scored run into one table: benchmark x method x visual tokens.

    python -m llava.eval.summarize [--root playground/data/eval] [--out results.md] [--csv results.csv]
                                   [--plot accuracy_vs_tokens.png]

Reads the results files that ``python -m llava.eval.benchmarks score`` (and ``llava.eval.run_benchmark``)
write under ``<root>/<benchmark>/results/``. Per run the table shows the headline score, that score as a
percentage of the baseline run (method ``none``) of the same benchmark and checkpoint, the prefill
TFLOPs per sample (full convention: vision tower, projector, LLM and the method's own work; see
docs/benchmarks.md), and how many answers were skipped as unreadable inputs (``--skip-bad-inputs``; they
are scored as empty answers). A second table averages the percentages over the benchmarks of each method
and budget (FasterVLM's "Average"). Files under ``results/`` that are not results files are skipped
with a warning.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REQUIRED = ("benchmark", "checkpoint", "method", "visual_tokens", "headline_metric", "headline", "metrics")
BASELINE_METHODS = ("none", "baseline")
BENCH_ORDER = ("vqav2", "gqa", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed",
               "mmvet", "llavabench")
COLUMNS = ("checkpoint", "benchmark", "method", "visual_tokens", "metric", "headline", "ratio_to_baseline_pct",
           "tflops_per_sample", "skipped_inputs", "method_args", "results_file")


class SummarizeError(Exception):
    pass


def collect(root: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every valid results record under ``root`` (with ``results_file`` added) and the warnings."""
    root = Path(root)
    if not root.is_dir():
        raise SummarizeError(f"results root not found: {root}")
    records, warnings = [], []
    for path in sorted(root.glob("*/results/**/*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            warnings.append(f"skipped {path}: not readable JSON ({e.__class__.__name__})")
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
            warnings.append(f"skipped {path}: not a results file (missing keys)")
            continue
        rec["results_file"] = str(path)
        records.append(rec)
    return records, warnings


def _tokens_sort(value: Any) -> tuple[int, float | str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, -float(value))
    return (1, str(value))


def _bench_sort(name: str) -> tuple[int, str]:
    return (BENCH_ORDER.index(name) if name in BENCH_ORDER else len(BENCH_ORDER), name)


def baselines(records: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """``(benchmark, checkpoint) -> baseline record``."""
    out: dict[tuple[str, str], dict] = {}
    for rec in records:
        if str(rec["method"]).lower() not in BASELINE_METHODS or rec["headline"] is None:
            continue
        key = (rec["benchmark"], rec["checkpoint"])
        if key not in out or _tokens_sort(rec["visual_tokens"]) < _tokens_sort(out[key]["visual_tokens"]):
            out[key] = rec
    return out


def flops_function() -> Callable[..., Any] | None:
    """``llava.bench.flops.prefill_flops`` if it can be imported, else ``None`` (no TFLOPs column).

    It is called with the keyword arguments it accepts among ``visual_tokens``, ``method``,
    ``method_args``, ``checkpoint`` and ``benchmark`` and returns prefill FLOPs per sample; a row it
    cannot compute keeps an empty cell."""
    try:
        from llava.bench.flops import prefill_flops
    except Exception:  # any import problem means "no FLOPs column"
        return None
    return prefill_flops if callable(prefill_flops) else None


def compression_method(rec: dict) -> str:
    """The registry name of the run's method. The results file's ``method`` is the run label, which carries
    any non-default knob (``vtc-cls_start-layer-22``, ``fastv_fastv-k-3``); the scorer also writes
    ``compression_method`` from the answers' metadata. Older results files lack it: the label up to its
    first ``_`` is the method (registry names contain no ``_``); the knob values are in ``method_args``."""
    name = rec.get("compression_method")
    if isinstance(name, str) and name:
        return name
    return str(rec["method"]).split("_", 1)[0]


def _flops(fn: Callable[..., Any] | None, rec: dict) -> float | None:
    if fn is None or not isinstance(rec.get("visual_tokens"), int | float):
        return None
    offered = {"visual_tokens": _tokens_given(rec), "method": compression_method(rec),
               "method_args": rec.get("method_args") or {}, "checkpoint": rec["checkpoint"],
               "benchmark": rec["benchmark"]}
    try:
        params = inspect.signature(fn).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs = offered
        else:
            kwargs = {k: v for k, v in offered.items() if k in params}
        value = fn(**kwargs)
        return float(value) if value is not None else None
    except Exception:  # a FLOPs formula that cannot handle a row leaves the cell empty
        return None


def _tokens_given(rec: dict) -> int | float:
    """Visual tokens the LLM got per sample: the answers' mean where the scorer recorded it (a method whose count
    only lands near its budget, e.g. PruMerge+ under the VTC-CLS rule, differs from the label), else the budget."""
    mean = rec.get("visual_tokens_mean")
    if isinstance(mean, int | float) and not isinstance(mean, bool) and mean > 0:
        return round(mean)
    return rec["visual_tokens"]


def _skipped(rec: dict) -> int:
    value = rec.get("num_input_errors")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def build_rows(records: Sequence[dict], flops_fn: Callable[..., Any] | None = None) -> list[dict[str, Any]]:
    base = baselines(records)
    rows = []
    for rec in records:
        ref = base.get((rec["benchmark"], rec["checkpoint"]))
        ratio = None
        if ref is not None and rec["headline"] is not None and ref["headline"]:
            ratio = 100.0 * rec["headline"] / ref["headline"]
        flops = _flops(flops_fn, rec)
        rows.append({
            "checkpoint": rec["checkpoint"], "benchmark": rec["benchmark"], "method": rec["method"],
            "visual_tokens": rec["visual_tokens"], "metric": rec["headline_metric"], "headline": rec["headline"],
            "ratio_to_baseline_pct": ratio, "tflops_per_sample": flops / 1e12 if flops is not None else None,
            "skipped_inputs": _skipped(rec),
            "method_args": json.dumps(rec.get("method_args") or {}, sort_keys=True),
            "results_file": rec.get("results_file", ""),
        })
    rows.sort(key=lambda r: (r["checkpoint"], _bench_sort(r["benchmark"]),
                             str(r["method"]).lower() not in BASELINE_METHODS, r["method"],
                             _tokens_sort(r["visual_tokens"]), r["method_args"]))
    return rows


def average_ratios(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Mean ratio to baseline over benchmarks, per (checkpoint, method, tokens, args)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["ratio_to_baseline_pct"] is not None:
            groups[(r["checkpoint"], r["method"], r["visual_tokens"], r["method_args"])].append(r)
    out = []
    for (ckpt, method, tokens, args), members in groups.items():
        ratios = [m["ratio_to_baseline_pct"] for m in members]
        out.append({"checkpoint": ckpt, "method": method, "visual_tokens": tokens, "method_args": args,
                    "benchmarks": ",".join(m["benchmark"] for m in sorted(members, key=lambda m: _bench_sort(m["benchmark"]))),
                    "average_ratio_pct": sum(ratios) / len(ratios)})
    out.sort(key=lambda r: (r["checkpoint"], str(r["method"]).lower() not in BASELINE_METHODS, r["method"],
                            _tokens_sort(r["visual_tokens"])))
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows: Sequence[dict], averages: Sequence[dict]) -> str:
    lines = ["| checkpoint | benchmark | method | tokens | metric | score | % of baseline | TFLOPs/sample | "
             "skipped inputs | args |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        args = "" if r["method_args"] == "{}" else r["method_args"]
        lines.append(f"| {r['checkpoint']} | {r['benchmark']} | {r['method']} | {_fmt(r['visual_tokens'])} | "
                     f"{r['metric']} | {_fmt(r['headline'])} | {_fmt(r['ratio_to_baseline_pct'])} | "
                     f"{_fmt(r['tflops_per_sample'], 3)} | {r['skipped_inputs']} | {args.replace('|', '/')} |")
    note = skipped_note(rows)
    if note:
        lines += ["", note]
    if averages:
        lines += ["", "Average of the ratios to the baseline over the benchmarks listed:", "",
                  "| checkpoint | method | tokens | average % of baseline | benchmarks |",
                  "| --- | --- | ---: | ---: | --- |"]
        for a in averages:
            lines.append(f"| {a['checkpoint']} | {a['method']} | {_fmt(a['visual_tokens'])} | "
                         f"{_fmt(a['average_ratio_pct'])} | {a['benchmarks']} |")
    return "\n".join(lines) + "\n"


def skipped_note(rows: Sequence[dict]) -> str:
    """One sentence on the answers skipped as bad inputs, or ``""`` when none were."""
    runs = [r for r in rows if r["skipped_inputs"]]
    if not runs:
        return ""
    total = sum(r["skipped_inputs"] for r in runs)
    return (f"{total} answer(s) in {len(runs)} run(s) were skipped as unreadable inputs (--skip-bad-inputs) "
            "and scored as empty answers; see the 'skipped inputs' column.")


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})


def plot(path: str | Path, rows: Sequence[dict]) -> None:
    """Headline vs visual tokens, one panel per benchmark, one line per (checkpoint, method)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SummarizeError("--plot needs matplotlib: pip install 'vtc-toolkit[plot]' (or pip install matplotlib)") from None
    usable = [r for r in rows if r["headline"] is not None and isinstance(r["visual_tokens"], int | float)]
    if not usable:
        raise SummarizeError("nothing to plot: no results with a local score and a numeric token count")
    benches = sorted({r["benchmark"] for r in usable}, key=_bench_sort)
    cols = min(3, len(benches))
    nrows = (len(benches) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    for ax, bench in zip(axes.flat, benches):
        lines: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        metric = ""
        for r in usable:
            if r["benchmark"] == bench:
                lines[(r["checkpoint"], r["method"])].append((r["visual_tokens"], r["headline"]))
                metric = r["metric"]
        for (ckpt, method), pts in sorted(lines.items()):
            pts.sort()
            label = method if len({c for c, _ in lines}) == 1 else f"{ckpt} {method}"
            if str(method).lower() in BASELINE_METHODS and len(pts) == 1:
                ax.axhline(pts[0][1], linestyle="--", color="gray", label=label)
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_title(bench)
        ax.set_xlabel("visual tokens")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    title, _usage, body = __doc__.split("\n\n", 2)
    p = argparse.ArgumentParser(prog="python -m llava.eval.summarize", description=title + "\n\n" + body.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="playground/data/eval",
                   help="the eval data root, holding <benchmark>/results/ (default: %(default)s)")
    p.add_argument("--out", help="write the markdown table here (default: print it)")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--plot", help="also draw headline vs visual tokens per benchmark (needs matplotlib)")
    args = p.parse_args(argv)
    try:
        records, warnings = collect(args.root)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not records:
            raise SummarizeError(f"no results files under {args.root}/*/results/")
        rows = build_rows(records, flops_function())
        text = markdown(rows, average_ratios(rows))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"wrote {args.out} ({len(rows)} runs)")
            note = skipped_note(rows)
            if note:
                print(note)
        else:
            print(text, end="")
        if args.csv:
            write_csv(args.csv, rows)
        if args.plot:
            plot(args.plot, rows)
    except SummarizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {getattr(e, 'filename', '')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
