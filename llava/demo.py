"""``make demo``: the whole evaluation path on an embedded tiny model, on CPU, in about a minute.

    python -m llava.demo [--out demo_out] [--methods none,fastervlm,vtc-cls] [--tokens 64]

1. writes a tiny random LLaVA-1.5-shaped checkpoint (``llava.model.tiny``),
2. generates a few items of POPE and ScienceQA in their real formats (``llava.data.mini``),
3. answers them with each method through the real entry points (``model_vqa_loader``,
   ``model_vqa_science``), batch size 2, resumable answer files,
4. scores the answers with the benchmarks' scorers and prints what ran.

The weights are random, so the answers and scores are meaningless; the point is that every step of the
path (preprocessing, 576 image tokens, compression, generation, scoring) runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time

from llava.compression.registry import available_methods

DEFAULT_METHODS = ("none", "fastervlm", "vtc-cls", "fastv", "ficoco-v")


def _run_entry(module, argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            module.main(argv)
        except SystemExit as exit_:
            if exit_.code:
                raise RuntimeError(f"{module.__name__} failed (exit {exit_.code}); see the message above") from None


def main(argv: list[str] | None = None) -> None:
    from llava.data.mini import generate
    from llava.eval import model_vqa_loader, model_vqa_science
    from llava.eval.benchmarks import get_task, score
    from llava.model.tiny import write_hf_layout

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--methods", default=",".join(m for m in DEFAULT_METHODS))
    parser.add_argument("--tokens", type=int, default=64, help="visual-token budget of the compression methods")
    args = parser.parse_args(argv)
    registered = set(available_methods())
    methods = [m for m in args.methods.split(",") if m in registered or m == "none"]
    skipped = [m for m in args.methods.split(",") if m not in methods]

    start = time.time()
    ckpt = os.path.join(args.out, "checkpoints", "tiny-llava-v1.5")
    data_root = os.path.join(args.out, "eval")
    print(f"[1/4] tiny random LLaVA-1.5 checkpoint -> {ckpt}")
    write_hf_layout(ckpt, seed=0)
    print(f"[2/4] mini POPE and ScienceQA in their real formats -> {data_root}")
    generate(data_root, ["pope", "sqa"])

    rows = []
    for method in methods:
        method_args = [] if method == "none" else ["--method", method, "--visual-token-num", str(args.tokens)]
        if method == "fastv":  # FastV's budget is the kept count after layer K
            method_args = ["--method", "fastv", "--visual-token-num", str(args.tokens)]
        label = method if method == "none" else f"{method}@{args.tokens}"
        print(f"[3/4] answering with {label} ...")
        results = {}
        t0 = time.time()
        for bench, module in (("pope", model_vqa_loader), ("sqa", model_vqa_science)):
            task = get_task(bench)
            budget = "full" if method == "none" else str(args.tokens)
            answers = os.path.join(data_root, task.data_dir, "answers", "tiny-llava-v1.5", method, f"{budget}.jsonl")
            _run_entry(module, ["--model-path", ckpt, *task.inference_args(data_root), "--answers-file", answers,
                                "--batch-size", "2", "--num-workers", "0", "--max_new_tokens", "16",
                                "--device", "cpu", "--overwrite", *method_args])
            with contextlib.redirect_stdout(io.StringIO()):
                results[bench] = score(bench, answers, data_root=data_root)
        seconds = time.time() - t0
        rows.append((label, results["pope"]["visual_tokens_mean"], _avg_per_layer(results["pope"]["answers_file"]),
                     results["pope"]["headline"], results["sqa"]["headline"], seconds))

    print("[4/4] scored with the benchmarks' own scorers:\n")
    print(f"{'method':<16} {'tokens at LLM input':>19} {'avg per LLM layer':>17} {'POPE F1':>8} {'SQA-IMG':>8} "
          f"{'seconds':>8}")
    for label, tokens, per_layer, pope, sqa, seconds in rows:
        print(f"{label:<16} {tokens:>19.1f} {per_layer:>17.1f} {_fmt(pope):>8} {_fmt(sqa):>8} {seconds:>8.1f}")
    if skipped:
        print(f"\n(not registered in this build, skipped: {', '.join(skipped)})")
    print(f"\nDone in {time.time() - start:.0f}s. The weights are RANDOM: the answers and scores above are "
          "meaningless.\nWhat the demo shows is that the whole path runs: preprocessing, 576 image tokens per "
          "image (or the method's budget), generation, resumable answer files and scoring.\n"
          f"Answers and results are under {data_root}/*/answers and {data_root}/*/results.")


def _avg_per_layer(answers_file: str) -> float:
    """Mean over answers of the visual tokens each LLM layer saw (in-LLM methods prune between layers)."""
    with open(answers_file) as f:
        meta = [json.loads(line)["metadata"] for line in f if line.strip()]
    return sum(m.get("avg_visual_tokens", m.get("visual_tokens", 0)) for m in meta) / max(1, len(meta))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
