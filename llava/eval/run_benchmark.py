"""One runner behind every ``scripts/v1_5/eval/<METHOD>/<bench>.sh TOKENS [METHOD_ARG]``.

    python -m llava.eval.run_benchmark METHOD BENCH [TOKENS] [METHOD_ARG] [-- extra entry-point flags]

1. builds the benchmark's inference command (entry point, question file, image folder, its flags) from the
   benchmark registry, adding ``--method METHOD --visual-token-num TOKENS`` and the method's main knob;
2. shards the questions across the GPUs in ``CUDA_VISIBLE_DEVICES`` (one process per GPU,
   ``--num-chunks N --chunk-idx i``; one process on the default device when none is visible);
3. merges the chunk files in chunk order (the question order; POPE and MME depend on it);
4. scores the merged answers and writes the results file.

Answers: ``<DATA_ROOT>/<bench>/answers/<ckpt>/<label>/<TOKENS>.jsonl`` where ``label`` is the method name,
or ``<method>_<knob>-<value>`` when METHOD_ARG is given; chunk files sit beside it under
``<TOKENS>_chunks/``. Everything resumes: a rerun continues each chunk where it stopped.

Environment: ``CKPT`` (checkpoint folder name under ``checkpoints/``) or ``MODEL_PATH`` (any folder),
``DATA_ROOT`` (default ``playground/data/eval``), ``CONV_MODE`` (``vicuna_v1``), ``BATCH_SIZE`` (1),
``CUDA_VISIBLE_DEVICES``, ``PYTHON`` (the interpreter for the workers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from llava.compression.registry import CompressionConfigError, get_method
from llava.eval.answers import merge_chunks
from llava.eval.benchmarks import TASKS, ScorerInputError, get_task, score

# The optional second script argument: each method's main knob (the flag it sets).
MAIN_KNOB = {
    "vtc-cls": "--start-layer",
    "fastv": "--fastv-k",
    "pdrop": "--pdrop-layers",
    "sparsevlm": "--sparsevlm-layers",
    "dart": "--dart-k",
    "prumerge": "--prumerge-knn",
    "prumerge+": "--prumerge-knn",
    "divprune": "--divprune-space",
    "random": "--seed",
    "tome": "--tome-r",
    "ficoco-v": "--ficoco-start-layer",
    "ficoco-l": "--ficoco-start-layer",
    "ficoco-vl": "--ficoco-llm-start-layer",
    "visionzip": "--contextual-tokens",
}


class ScriptError(ValueError):
    """Bad script arguments or environment; the message says what to fix."""


def method_flags(method: str, tokens: str | None, knob_value: str | None) -> tuple[str, list[str]]:
    """(answers label, entry-point flags) for a method, budget and optional knob value."""
    spec = get_method(method)
    if spec.name == "none":
        if knob_value is not None:
            raise ScriptError("the baseline takes no method argument")
        return "none", []
    fields = {f.metadata.get("flag") for f in spec.config_cls.__dataclass_fields__.values()}
    flags = ["--method", spec.name]
    if tokens is None:
        raise ScriptError(f"{spec.name} needs a visual-token budget: <script> TOKENS [METHOD_ARG]")
    if "--visual-token-num" not in fields:
        raise ScriptError(f"{spec.name} has no --visual-token-num budget flag; pass its flags after --")
    flags += ["--visual-token-num", tokens]
    label = spec.name
    if knob_value is not None:
        knob = MAIN_KNOB.get(spec.name)
        if knob is None or knob not in fields:
            raise ScriptError(f"{spec.name} has no main method argument; pass its flags after --")
        flags += [knob, knob_value]
        label = f"{spec.name}_{knob.lstrip('-')}-{knob_value}"
    return label, flags


def visible_gpus() -> list[str]:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        try:
            import torch

            return [str(i) for i in range(torch.cuda.device_count())]
        except Exception:
            return []
    return [g for g in value.split(",") if g.strip() not in ("", "-1")]


def model_path_from_env() -> tuple[str, str]:
    """(model path, checkpoint name) from MODEL_PATH or CKPT."""
    path = os.environ.get("MODEL_PATH")
    if path:
        return path, os.path.basename(os.path.normpath(path))
    ckpt = os.environ.get("CKPT", "llava-v1.5-7b")
    return os.path.join("checkpoints", ckpt), ckpt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m llava.eval.run_benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("method", help="method name (or 'baseline')")
    parser.add_argument("bench", help=f"one of {', '.join(sorted(TASKS))}")
    parser.add_argument("tokens", nargs="?", default=None, help="visual-token budget")
    parser.add_argument("method_arg", nargs="?", default=None, help="the method's main knob (see MAIN_KNOB)")
    args = parser.parse_args(argv)
    try:
        return _run(args, extra)
    except (ScriptError, CompressionConfigError, ScorerInputError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    task = get_task(args.bench)
    label, flags = method_flags(args.method, args.tokens, args.method_arg)
    model_path, ckpt = model_path_from_env()
    if not os.path.isdir(model_path):
        raise ScriptError(f"checkpoint folder {model_path} not found; set CKPT=<folder under checkpoints/> or MODEL_PATH")
    data_root = os.environ.get("DATA_ROOT", "playground/data/eval")
    budget = args.tokens if label != "none" else "full"
    answers_dir = os.path.join(data_root, task.data_dir, "answers", ckpt, label)
    merged = os.path.join(answers_dir, f"{budget}.jsonl")
    chunk_dir = os.path.join(answers_dir, f"{budget}_chunks")
    os.makedirs(chunk_dir, exist_ok=True)
    gpus = visible_gpus()
    n = max(1, len(gpus))
    python = os.environ.get("PYTHON", sys.executable)
    base = [python, "-m", task.entry_point, "--model-path", model_path, *task.inference_args(data_root),
            "--conv-mode", os.environ.get("CONV_MODE", "vicuna_v1"),
            "--batch-size", os.environ.get("BATCH_SIZE", "1"), *flags, *extra]
    print(f"[{task.name}] {label} budget {budget}: {n} chunk(s) on {'GPUs ' + ','.join(gpus) if gpus else 'the default device'}")
    procs, chunk_files = [], []
    for idx in range(n):
        chunk_file = os.path.join(chunk_dir, f"{n}_{idx}.jsonl")
        chunk_files.append(chunk_file)
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[idx]
        cmd = base + ["--answers-file", chunk_file, "--num-chunks", str(n), "--chunk-idx", str(idx)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        failed = [i for i, c in enumerate(codes) if c]
        print(f"error: chunk(s) {failed} failed (exit codes {[codes[i] for i in failed]}); answers written so far are "
              "kept, rerun the same command to resume", file=sys.stderr)
        return 1
    lines = merge_chunks(chunk_files, merged)
    print(f"[{task.name}] merged {lines} answers -> {merged}")
    tokens_label = int(args.tokens) if label != "none" and args.tokens and args.tokens.isdigit() else None
    record = score(task.name, merged, data_root=data_root, checkpoint=ckpt, method=label,
                   visual_tokens=tokens_label)
    headline = record["headline"]
    print(f"[{task.name}] {record['headline_metric']} = {'n/a (server/GPT scored)' if headline is None else headline}"
          f" -> {record['results_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
