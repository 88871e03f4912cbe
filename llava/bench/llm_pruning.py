"""Prefill speed of in-LLM pruning (FastV) against the unmodified model and the FLOPs-ideal speedup.

    python -m llava.bench.llm_pruning [--layers 8] [--repeats 5] [--dtype bf16] [--threads N] [--json out.json]

Model: a LLaVA-1.5-7B-shaped decoder (hidden 4096, 32 heads, intermediate 11008, vocab 32064) with ``--layers``
layers and random weights, SDPA attention, behind a stub vision tower (image features are random and fed through
``mm_encoder_outputs``, as the evaluation path does). Prompt: 35 text + 576 visual + 12 text tokens, batch 1.

Measured in ``--repeats`` rounds after one warm-up round; each round runs every variant once, back to back
(prefill = one forward with a fresh ``DynamicCache`` and ``logits_to_keep=1``). Speedup = median over rounds of
(unmodified time / variant time) within the round, which cancels slow drifts of a shared machine's load:

* ``none``: the unmodified model;
* ``engine keep-all``: the engine with FastV at ``K`` keeping every token (``--fastv-r 0``): its own overhead
  (scoring row, gathers, mask/RoPE rebuild);
* ``fastv`` at ``K`` with ``--fastv-r`` 0.5 (288 kept) and ``--visual-token-num`` 64.

The engine's own work is also measured directly: the time inside its prefill steps (scoring, selection, gathers,
mask/RoPE rebuild, trace) from a ``cProfile`` of one forward, as a share of the unmodified prefill.

FLOPs-ideal speedup: ratio of decoder matmul FLOPs (``llava.bench.flops.llm_flops`` on FastV's own
``token_schedule``), LM head and method overhead excluded. "of ideal" = measured speedup / ideal speedup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from llava.bench import flops
from llava.bench.geometries import BenchGeometry, get_geometry

TEXT_BEFORE, VISUAL, TEXT_AFTER = 35, 576, 12
HIDDEN, HEADS, INTERMEDIATE, VOCAB = 4096, 32, 11008, 32064
IMAGE_TOKEN_ID = 32000


def build_model(layers: int, dtype: torch.dtype):
    """LLaVA-1.5-7B-shaped decoder with ``layers`` layers, random weights, stub vision tower (never run)."""
    from transformers import LlavaForConditionalGeneration

    from llava.model.configs import clip_vision_config, llama_text_config, llava_config

    vision = clip_vision_config(hidden=64, intermediate=128, layers=1, heads=2, image_size=336, patch_size=14,
                                projection_dim=512)
    text = llama_text_config(hidden=HIDDEN, intermediate=INTERMEDIATE, layers=layers, heads=HEADS, kv_heads=HEADS,
                             vocab_size=VOCAB, pad_token_id=None, rms_norm_eps=1e-6)
    cfg = llava_config(vision, text, image_token_id=IMAGE_TOKEN_ID)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def make_prompt(dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, Any]]:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    g = torch.Generator().manual_seed(0)
    ids = torch.cat(
        [
            torch.randint(3, 32000, (TEXT_BEFORE,), generator=g),
            torch.full((VISUAL,), IMAGE_TOKEN_ID),
            torch.randint(3, 32000, (TEXT_AFTER,), generator=g),
        ]
    )[None]
    feats = torch.randn(VISUAL, HIDDEN, generator=g).to(dtype)
    return ids, {"image": BaseModelOutputWithPooling(pooler_output=[feats])}


def bench_geometry(layers: int) -> BenchGeometry:
    """The FLOPs geometry of the model :func:`build_model` makes (LLaVA-1.5-7B's decoder with ``layers`` layers)."""
    return get_geometry("llava-1.5-7b").replace(
        llm_layers=layers,
        llm_hidden=HIDDEN,
        llm_intermediate=INTERMEDIATE,
        llm_heads=HEADS,
        llm_kv_heads=HEADS,
        vocab_size=VOCAB,
    )


def ideal_speedup(layers: int, method_args: dict[str, Any]) -> float:
    """Decoder FLOPs of the unmodified prompt over those of FastV with ``method_args`` (its own token schedule),
    by :func:`llava.bench.flops.llm_flops`."""
    g = bench_geometry(layers)
    text = TEXT_BEFORE + TEXT_AFTER
    full = flops.token_counts("none", g, text_tokens=text)
    pruned = flops.token_counts("fastv", g, method_args, text_tokens=text)
    return flops.llm_flops(g, full, text) / flops.llm_flops(g, pruned, text)


def time_prefill(model, ids: torch.Tensor, mm: dict[str, Any]) -> float:
    from transformers import DynamicCache

    start = time.perf_counter()
    model(
        input_ids=ids, mm_encoder_outputs=mm, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1
    )
    return time.perf_counter() - start


def engine_step_seconds(model, ids: torch.Tensor, mm: dict[str, Any]) -> float:
    """Time inside the engine's own prefill work (scoring, selection, gathers, mask/RoPE rebuild, trace) in one
    forward, from a ``cProfile`` of that forward: robust to machine load, unlike a difference of two timings."""
    import cProfile
    import pstats

    from llava.compression.families import decoder_pruning

    prof = cProfile.Profile()
    prof.enable()
    time_prefill(model, ids, mm)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    engine_file = decoder_pruning.__file__
    return sum(
        ct
        for (file, _, name), (_, _, _, ct, _) in stats.items()
        if file == engine_file and name in ("enter", "finish")
    )


def run(
    layers: int, repeats: int, dtype: torch.dtype, k: int = 2, log: Callable[[str], None] = print
) -> dict:
    import llava.compression as vtc

    model = build_model(layers, dtype)
    ids, mm = make_prompt(dtype)
    variants: list[tuple[str, dict[str, Any] | None, int]] = [
        ("none", None, VISUAL),
        ("engine keep-all", dict(fastv_k=k, fastv_r=0.0), VISUAL),
        ("fastv R=0.5", dict(fastv_k=k, fastv_r=0.5), VISUAL // 2),
        ("fastv keep 64", dict(fastv_k=k, visual_token_num=64), 64),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with torch.inference_mode():
        for rep in range(repeats + 1):  # round-robin, first round = warm-up; the order rotates every round
            shift = rep % len(variants)
            for name, kwargs, _ in variants[shift:] + variants[:shift]:
                if kwargs is None:
                    vtc.remove(model)
                else:
                    vtc.apply(model, "fastv", **kwargs)
                t = time_prefill(model, ids, mm)
                if rep:
                    times[name].append(t)
            log(
                f"round {rep}: "
                + (", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in times.items()) if rep else "warm-up")
            )
        vtc.apply(model, "fastv", fastv_k=k, fastv_r=0.0)
        step_keep_all = engine_step_seconds(model, ids, mm)
        vtc.apply(model, "fastv", fastv_k=k, fastv_r=0.5)
        step_pruning = engine_step_seconds(model, ids, mm)
    vtc.remove(model)
    base = times["none"]
    rows = []
    for name, kwargs, kept in variants:
        ts = times[name]
        # paired: the variant against the unmodified run of the same round (adjacent in time), median over rounds
        paired = statistics.median(b / t for b, t in zip(base, ts))
        ideal = 1.0 if kwargs is None or kept == VISUAL else ideal_speedup(layers, kwargs)
        rows.append(
            {
                "variant": name,
                "visual_after_k": kept,
                "median_ms": statistics.median(ts) * 1e3,
                "best_ms": min(ts) * 1e3,
                "times_ms": [t * 1e3 for t in ts],
                "speedup": paired,
                "speedup_best": min(base) / min(ts),
                "ideal": ideal,
                "of_ideal": paired / ideal,
            }
        )
    return {
        "layers": layers,
        "k": k,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "prompt": f"{TEXT_BEFORE} text + {VISUAL} visual + {TEXT_AFTER} text",
        "repeats": repeats,
        "rows": rows,
        "engine_step_ms": {"keep-all": step_keep_all * 1e3, "fastv R=0.5": step_pruning * 1e3},
        "engine_step_share": step_keep_all / statistics.median(base),
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['layers']}-layer LLaVA-7B-shaped decoder, {result['dtype']}, {result['threads']} threads, "
        f"prompt {result['prompt']}, FastV K={result['k']}, {result['repeats']} rounds:",
        "",
        "| variant | visual tokens from K | prefill ms, median (best) | speedup (paired median) | FLOPs-ideal "
        "| of ideal |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['visual_after_k']} | {r['median_ms']:.0f} ({r['best_ms']:.0f}) | "
            f"{r['speedup']:.3f} | {r['ideal']:.3f} | {100 * r['of_ideal']:.1f}% |"
        )
    steps = result["engine_step_ms"]
    lines += [
        "",
        f"Engine's own prefill work (cProfile of one forward): keep-all {steps['keep-all']:.1f} ms, "
        f"R=0.5 {steps['fastv R=0.5']:.1f} ms = {100 * result['engine_step_share']:.2f}% of the unmodified prefill.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8, help="decoder layers (default 8)")
    p.add_argument("--fastv-k", type=int, default=2, help="FastV pruning layer K (default 2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if not 1 <= args.fastv_k < args.layers:
        p.error("--fastv-k must be in [1, layers - 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    result = run(args.layers, args.repeats, dtype, args.fastv_k, log=lambda s: print(s, file=sys.stderr))
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
