"""Why a pruned prefill reaches only part of its FLOPs-ideal speedup: the decoder's FLOP rate at the pruned row count.

    python -m llava.bench.row_rate [--device cpu|cuda] [--dtype bf16|fp16|fp32] [--rows 124,188,252,636,992,5088]
        [--repeats R] [--warmup W] [--model-config llava-1.5-7b] [--out rows.json]

The FLOPs-ideal prefill speedup of pruning (``llava.bench.flops``) assumes the decoder runs at the same FLOP rate
with 124 rows (64 visual + 60 text tokens) as with 636 (576 + 60). It does not, when the hardware needs many rows to
fill its matrix units or when a forward has a fixed cost (reading the weights once, kernel launches, Python). This
measures that rate directly: one decoder layer of ``--model-config``'s shape (random weights, SDPA, causal mask, the
model's own RoPE), batch 1, forwarded at each row count; per row count the median time, the achieved TFLOP/s by
:func:`llava.bench.flops.llm_layer_flops`, and the **expected fraction of ideal** when pruning from the largest row
count not above 636 (or the first reference) down to it, ``rate(rows) / rate(reference)``. Batch 8 at 124 tokens is
992 rows of the same matmuls, so the 992 and 5088 rows stand for batch 8 (its attention is per sample, which this
single-sequence layer overstates slightly).

Clock: CUDA events on a GPU; on CPU the measuring thread's CPU time with one thread (stable on a shared machine).
Not a test: a measurement to quote with the machine named (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from llava.bench import flops as F
from llava.bench.geometries import available_geometries, get_geometry

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REFERENCE_ROWS = 636  # 576 visual + 60 text tokens: the unpruned LLaVA-1.5 prompt


def build_layer(geometry, dtype: torch.dtype, device: str):
    """One ``LlamaDecoderLayer`` of ``geometry``'s shape plus the model's rotary embedding, random weights."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=geometry.llm_hidden, intermediate_size=geometry.llm_intermediate,
                         num_attention_heads=geometry.llm_heads, num_key_value_heads=geometry.llm_kv_heads,
                         num_hidden_layers=1, vocab_size=geometry.vocab_size, attn_implementation="sdpa")
    config._attn_implementation = "sdpa"
    with torch.device(device):
        layer = LlamaDecoderLayer(config, layer_idx=0).to(dtype)
        rotary = LlamaRotaryEmbedding(config)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.02)
    return layer.eval(), rotary


def time_rows(layer, rotary, rows: int, dtype: torch.dtype, device: str, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of one causal forward of ``layer`` over ``rows`` tokens (batch 1), ``repeats`` times."""
    hidden = torch.randn(1, rows, layer.hidden_size, dtype=dtype, device=device)
    positions = torch.arange(rows, device=device)[None]
    cos_sin = rotary(hidden, positions)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.startswith("cuda"):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end)
            else:
                t0 = time.thread_time()
                layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
                elapsed = (time.thread_time() - t0) * 1000.0
            if i >= warmup:
                times.append(elapsed)
    return times


def measure(model_config: str, rows: list[int], device: str, dtype: str, repeats: int, warmup: int) -> dict:
    geometry = get_geometry(model_config)
    torch_dtype = DTYPES[dtype]
    if device == "cpu":
        torch.set_num_threads(1)
    layer, rotary = build_layer(geometry, torch_dtype, device)
    results = []
    for n in rows:
        times = time_rows(layer, rotary, n, torch_dtype, device, repeats, warmup)
        median = statistics.median(times)
        flops = F.llm_layer_flops(geometry, n)
        results.append({"rows": n, "ms_median": median, "ms_min": min(times), "ms_max": max(times),
                        "layer_flops": flops, "tflops_per_s": flops / (median / 1000.0) / 1e12})
        print(f"  {n:5d} rows: {median:9.3f} ms ({min(times):.3f}-{max(times):.3f}), "
              f"{results[-1]['tflops_per_s']:.2f} TFLOP/s", flush=True)
    by_rows = {r["rows"]: r for r in results}
    reference = max((n for n in rows if n <= REFERENCE_ROWS), default=rows[0])
    for r in results:
        r["rate_vs_reference"] = r["tflops_per_s"] / by_rows[reference]["tflops_per_s"]
    machine = {"device": device, "dtype": dtype, "torch": torch.__version__, "python": platform.python_version(),
               "processor": platform.processor() or platform.machine()}
    if device.startswith("cuda"):
        machine["device_name"] = torch.cuda.get_device_name(device)
    else:
        machine["threads"] = torch.get_num_threads()
    return {"model_config": model_config, "reference_rows": reference, "repeats": repeats, "warmup": warmup,
            "machine": machine, "rows": results}


def markdown(result: dict) -> str:
    ref = result["reference_rows"]
    lines = [f"| rows | layer ms, median (min-max) | TFLOP/s | rate vs {ref} rows |", "| ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['rows']} | {r['ms_median']:.3f} ({r['ms_min']:.3f}-{r['ms_max']:.3f}) | "
                     f"{r['tflops_per_s']:.2f} | {r['rate_vs_reference']:.2f} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="llava-1.5-7b", choices=available_geometries())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, bf16 on CPU")
    p.add_argument("--rows", type=_ints, default=[124, 188, 252, 636, 992, 5088])
    p.add_argument("--repeats", type=int, default=None, help="default: 20 on CUDA, 3 on CPU")
    p.add_argument("--warmup", type=int, default=None, help="default: 5 on CUDA, 1 on CPU")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (use --device cpu)", file=sys.stderr)
        return 2
    dtype = args.dtype or ("fp16" if cuda else "bf16")
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    print(f"row_rate: one {args.model_config} decoder layer, {dtype} on {args.device}, batch 1", flush=True)
    result = measure(args.model_config, args.rows, args.device, dtype, repeats, warmup)
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
