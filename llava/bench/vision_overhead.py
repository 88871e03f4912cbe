"""Vision-side scoring overhead and prefill speed-up of the pre-LLM methods (a benchmark, not a test).

    python -m llava.bench.vision_overhead [--llm-layers 2] [--reps 3] [--dtype bf16] [--out table.md]

Builds a LLaVA-1.5-shaped model with random weights: the real CLIP ViT-L/14-336 tower (24 layers, 1024 wide,
577 tokens), the mlp2x_gelu projector and a Vicuna-7B-wide Llama (4096 hidden, FFN 11008) with only
``--llm-layers`` decoder layers so that it runs on a CPU. One image, a 35 + 576 + 12 token prompt, SDPA everywhere.

Measured as the best of ``--reps`` runs, round-robin after a warm-up round. Ratios use process CPU time (both
threads), which other processes on a shared machine disturb far less than wall time; OpenMP threads are set to
sleep rather than spin when idle (``OMP_WAIT_POLICY=PASSIVE`` unless set).

* full forward: the unmodified model's prefill (vision tower + projector + LLM, ``logits_to_keep=1``);
* scoring overhead of each method: its reducer (scores, selection, merging; DivPrune includes projecting all 576
  tokens) on the captured vision signals, on *one* thread, relative to the full forward - the goal is < 1 %;
* the cost of the q/k probes: the tower with probes on layers 20-23 vs without;
* prefill 576 -> 64 visual tokens: the LLM part alone and end to end (FasterVLM, image encoding included), and the
  end-to-end figure with the LLM part extrapolated linearly to Vicuna-7B's 32 layers.

Writes a markdown table to stdout (and ``--out``).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning, which on a shared, oversubscribed
# machine otherwise burns the other core and makes every figure noisy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402

import llava.compression as vtc  # noqa: E402
from llava.bench.geometries import LLAVA_15_7B  # noqa: E402
from llava.bench.latency import build_random_model  # noqa: E402
from llava.compression.families.llava import collect_vision_signals  # noqa: E402

PRE_TEXT, POST_TEXT = 35, 12
REDUCER_REPS = 20
METHODS: list[tuple[str, dict]] = [  # every layer they read is in 20..23
    ("fastervlm", {"visual_token_num": 64}),
    ("vtc-cls", {"visual_token_num": 64, "start_layer": 20}),
    ("visionzip", {"visual_token_num": 64}),
    ("prumerge", {}),
    ("prumerge+", {"visual_token_num": 64}),
    ("divprune", {"visual_token_num": 64}),
    ("divprune", {"visual_token_num": 64, "divprune_space": "vision"}),
    ("random", {"visual_token_num": 64}),
    ("pool", {"visual_token_num": 64}),
]


def build_model(llm_layers: int, dtype: torch.dtype):
    """LLaVA-1.5-7B's shape with ``llm_layers`` decoder layers, random weights (seed 0), on the CPU."""
    return build_random_model(LLAVA_15_7B.replace(llm_layers=llm_layers), dtype, "cpu")


def prompt(model, visual_tokens: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, model.config.image_token_id, (PRE_TEXT + POST_TEXT,), generator=g)
    image = torch.full((visual_tokens,), model.config.image_token_id)
    return torch.cat([text[:PRE_TEXT], image, text[PRE_TEXT:]])[None]


@dataclass
class Timing:
    """Best (minimum) wall time and process CPU time of one measurement, in seconds."""

    wall: float = float("inf")
    cpu: float = float("inf")

    def add(self, wall: float, cpu: float) -> None:
        self.wall, self.cpu = min(self.wall, wall), min(self.cpu, cpu)


def _once(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def timed(fn: Callable[[], object], reps: int, threads: int | None = None) -> Timing:
    """Best of ``reps`` runs after one warm-up (optionally with ``threads`` intra-op threads)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    best = Timing()
    try:
        fn()
        for _ in range(reps):
            best.add(*_once(fn))
    finally:
        torch.set_num_threads(previous)
    return best


def timed_rounds(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, Timing]:
    """Best of ``reps`` runs of each function, round-robin after a warm-up round, so that load from other
    processes hits every measurement alike."""
    best = {name: Timing() for name in fns}
    for round_ in range(reps + 1):
        for name, fn in fns.items():
            wall, cpu = _once(fn)
            if round_:  # round 0 is the warm-up
                best[name].add(wall, cpu)
    return best


@torch.no_grad()
def run(llm_layers: int, reps: int, dtype: torch.dtype) -> str:
    t0 = time.perf_counter()
    model = build_model(llm_layers, dtype)
    build_s = time.perf_counter() - t0
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1)).to(dtype)
    ids576, ids64 = prompt(model, 576), prompt(model, 64)
    base = model.model

    feats576 = base.get_image_features(pixel_values=pixels).pooler_output
    mm576 = {"image": _pooled(feats576)}
    mm64 = {"image": _pooled([feats576[0][:64]])}

    def compressed_prefill():  # applying / removing is attribute bookkeeping (microseconds)
        vtc.apply(model, "fastervlm", visual_token_num=64)
        try:
            prepared = vtc.prepare_multimodal_inputs(model, ids576, None, pixels)
            model(
                input_ids=prepared["input_ids"],
                mm_encoder_outputs=prepared["mm_encoder_outputs"],
                logits_to_keep=1,
            )
        finally:
            vtc.remove(model)

    probe_layers = tuple(range(20, 24))
    times = timed_rounds(
        {
            "full": lambda: model(input_ids=ids576, pixel_values=pixels, logits_to_keep=1),
            "tower": lambda: base.vision_tower(pixels, output_hidden_states=-2),
            "probe": lambda: collect_vision_signals(model, pixels, probe_layers),
            "llm576": lambda: model(input_ids=ids576, mm_encoder_outputs=mm576, logits_to_keep=1),
            "llm64": lambda: model(input_ids=ids64, mm_encoder_outputs=mm64, logits_to_keep=1),
            "e2e64": compressed_prefill,
        },
        reps,
    )
    t_full, t_tower, t_probe = times["full"], times["tower"], times["probe"]
    t_llm576, t_llm64, t_e2e64 = times["llm576"], times["llm64"], times["e2e64"]

    # one tower pass with every layer any method reads; each reducer is timed on these signals
    signals, _ = collect_vision_signals(model, pixels, probe_layers, with_image_keys=True)
    geometry = vtc.model_geometry(model)
    rows = []
    for name, kwargs in METHODS:
        config = vtc.make_config(name, geometry, **kwargs)
        t_reduce = timed(lambda config=config: config.reduce(signals), REDUCER_REPS, threads=1)
        tokens = config.reduce(signals).trace(0)["visual_tokens"]
        rows.append((name, kwargs, tokens, t_reduce))

    ms = 1e3

    def row(label: str, t: Timing) -> str:
        return f"| {label} | {t.wall * ms:.0f} | {t.cpu * ms:.0f} | {100 * t.cpu / t_full.cpu:.1f} % |"

    lines = [
        f"Model: CLIP ViT-L/14-336 (24 layers) + mlp2x_gelu + Llama 4096 x {llm_layers} layers (FFN 11008), "
        f"random weights, {str(dtype).removeprefix('torch.')}, SDPA, batch 1, prompt {PRE_TEXT} + 576 + {POST_TEXT} "
        f"tokens. CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); torch {torch.__version__}. Best of {reps} "
        f"round-robin runs; reducers: best of {REDUCER_REPS} on 1 thread. Ratios use process CPU time, which "
        f"other processes on a shared machine disturb far less than wall time. Model build {build_s:.0f} s.",
        "",
        "| measurement | wall (ms) | CPU (ms) | CPU relative to full forward |",
        "| --- | ---: | ---: | ---: |",
        row("full forward, 576 visual tokens (vision + projector + LLM prefill)", t_full),
        row("vision tower alone", t_tower),
        row("vision tower + q/k probes on layers 20-23", t_probe),
        "",
        f"| method (pre-LLM) | visual tokens | reducer CPU (ms) | vs full forward ({llm_layers} LLM layers) "
        "| < 1 % | vs full forward (32 layers, extrapolated) |",
        "| --- | ---: | ---: | ---: | :---: | ---: |",
    ]
    scale = 32 / llm_layers  # linear-in-layers extrapolation of the LLM part to Vicuna-7B's 32 layers
    est576 = (t_full.cpu - t_llm576.cpu) + scale * t_llm576.cpu
    est64 = (t_e2e64.cpu - t_llm64.cpu) + scale * t_llm64.cpu
    for name, kwargs, tokens, t in rows:
        args = " ".join(f"{k}={v}" for k, v in kwargs.items()) or "adaptive"
        share = 100 * t.cpu / t_full.cpu
        lines.append(
            f"| {name} ({args}) | {tokens} | {t.cpu * ms:.2f} | {share:.3f} % | {'yes' if share < 1 else 'no'} "
            f"| {100 * t.cpu / est576:.3f} % |"
        )
    lines += [
        "",
        "| prefill (CPU time) | 576 visual tokens (ms) | 64 visual tokens (ms) | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| LLM only ({llm_layers} layers, features given) | {t_llm576.cpu * ms:.0f} | {t_llm64.cpu * ms:.0f} | "
        f"{t_llm576.cpu / t_llm64.cpu:.2f}x |",
        f"| end to end (image encoding + LLM; fastervlm T=64) | {t_full.cpu * ms:.0f} | {t_e2e64.cpu * ms:.0f} | "
        f"{t_full.cpu / t_e2e64.cpu:.2f}x |",
        f"| end to end, LLM extrapolated to 32 layers (linear) | {est576 * ms:.0f} | {est64 * ms:.0f} | "
        f"{est576 / est64:.2f}x |",
        "",
        f"Wall-clock prefill speed-up (same runs): LLM only {t_llm576.wall / t_llm64.wall:.2f}x, "
        f"end to end {t_full.wall / t_e2e64.wall:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def _pooled(feats):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(pooler_output=list(feats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava.bench.vision_overhead", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--llm-layers", type=int, default=2, help="decoder layers of the 4096-wide LLM (default 2)"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement (default 3)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.llm_layers < 1 or args.reps < 1:
        parser.error("--llm-layers and --reps must be >= 1")
    table = run(args.llm_layers, args.reps, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    sys.stdout.write(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
