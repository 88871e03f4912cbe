"""One runner behind every ``scripts/v1_5/eval/<METHOD>/<bench>.sh TOKENS [METHOD_ARG]``.

    python -m llava.eval.run_benchmark METHOD BENCH [TOKENS] [METHOD_ARG] [-- extra entry-point flags]

1. builds the benchmark's inference command (entry point, question file, image folder, its flags) from the
   benchmark registry, adding ``--method METHOD --visual-token-num TOKENS`` and the method's main knob;
2. shards the questions across the GPUs in ``CUDA_VISIBLE_DEVICES`` (one process per GPU,
   ``--num-chunks N --chunk-idx i``; one process on the default device when none is visible);
3. merges the chunk files in chunk order (the question order; POPE and MME depend on it);
4. scores the merged answers and writes the results file.

Answers: ``<DATA_ROOT>/<bench>/answers/<ckpt>/<label>/<TOKENS>.jsonl`` where ``label`` is the method name
followed by every setting given beyond the defaults (:mod:`llava.eval.run_label`): METHOD_ARG, a ``CONV_MODE``
other than ``vicuna_v1`` and the extra flags after ``--`` that can change an answer, e.g. ``fastv`` (defaults),
``fastv_fastv-k-3`` (``pope.sh 64 3`` or ``pope.sh 64 -- --fastv-k 3``), ``fastv_max-new-tokens-8``. Chunk files
sit beside it under ``<TOKENS>_chunks/``. Everything resumes: a rerun continues each chunk where it stopped (the
entry points refuse a chunk file made with other settings).

The runner owns its inference processes: on SIGTERM, SIGINT or SIGHUP it stops them and waits for them before
exiting, and if it is killed outright (SIGKILL) they end with it (:mod:`llava.eval.parent_watch`), so a rerun
never races an orphan.

Environment: ``CKPT`` (checkpoint folder name under ``checkpoints/``) or ``MODEL_PATH`` (any folder),
``DATA_ROOT`` (default ``playground/data/eval``), ``CONV_MODE`` (``vicuna_v1``), ``BATCH_SIZE`` (1),
``CUDA_VISIBLE_DEVICES``, ``PYTHON`` (the interpreter for the workers).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from llava.compression.registry import CompressionConfigError, get_method
from llava.eval.answers import merge_chunks
from llava.eval.benchmarks import TASKS, ScorerInputError, get_task, score
from llava.eval.parent_watch import child_environment
from llava.eval.run_label import settings_label

DEFAULT_CONV_MODE = "vicuna_v1"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

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


def method_flags(method: str, tokens: str | None, knob_value: str | None) -> tuple[str, list[str], list[str]]:
    """(method name, its budget flags, its main-knob flags) for a method, budget and optional knob value."""
    spec = get_method(method)
    if spec.name == "none":
        if knob_value is not None:
            raise ScriptError("the baseline takes no method argument")
        return "none", [], []
    fields = {f.metadata.get("flag") for f in spec.config_cls.__dataclass_fields__.values()}
    if tokens is None:
        raise ScriptError(f"{spec.name} needs a visual-token budget: <script> TOKENS [METHOD_ARG]")
    if "--visual-token-num" not in fields:
        raise ScriptError(f"{spec.name} has no --visual-token-num budget flag; pass its flags after --")
    knob_flags = []
    if knob_value is not None:
        knob = MAIN_KNOB.get(spec.name)
        if knob is None or knob not in fields:
            raise ScriptError(f"{spec.name} has no main method argument; pass its flags after --")
        knob_flags = [knob, knob_value]
    return spec.name, ["--method", spec.name, "--visual-token-num", tokens], knob_flags


def answers_label(method: str, knob_flags: list[str], conv_mode: str, extra: list[str]) -> str:
    """The answers folder name: the method and every setting given beyond the defaults (in the order the
    entry point reads them, so the last of a repeated flag counts)."""
    conv = [] if conv_mode == DEFAULT_CONV_MODE else ["--conv-mode", conv_mode]
    return settings_label(method, conv + knob_flags + extra)


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
    except (ScriptError, CompressionConfigError, ScorerInputError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    task = get_task(args.bench)
    name, budget_flags, knob_flags = method_flags(args.method, args.tokens, args.method_arg)
    conv_mode = os.environ.get("CONV_MODE", DEFAULT_CONV_MODE)
    label = answers_label(name, knob_flags, conv_mode, extra)
    model_path, ckpt = model_path_from_env()
    if not os.path.isdir(model_path):
        raise ScriptError(f"checkpoint folder {model_path} not found; set CKPT=<folder under checkpoints/> or MODEL_PATH")
    data_root = os.environ.get("DATA_ROOT", "playground/data/eval")
    budget = args.tokens if name != "none" else "full"
    answers_dir = os.path.join(data_root, task.data_dir, "answers", ckpt, label)
    merged = os.path.join(answers_dir, f"{budget}.jsonl")
    chunk_dir = os.path.join(answers_dir, f"{budget}_chunks")
    os.makedirs(chunk_dir, exist_ok=True)
    gpus = visible_gpus()
    n = max(1, len(gpus))
    python = os.environ.get("PYTHON", sys.executable)
    base = [python, "-m", task.entry_point, "--model-path", model_path, *task.inference_args(data_root),
            "--conv-mode", conv_mode, "--batch-size", os.environ.get("BATCH_SIZE", "1"), *budget_flags, *knob_flags,
            *extra]
    print(f"[{task.name}] {label} budget {budget}: {n} chunk(s) on {'GPUs ' + ','.join(gpus) if gpus else 'the default device'}",
          flush=True)
    chunk_files = [os.path.join(chunk_dir, f"{n}_{idx}.jsonl") for idx in range(n)]
    commands = []
    for idx, chunk_file in enumerate(chunk_files):
        env = child_environment(dict(os.environ))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[idx]
        commands.append((base + ["--answers-file", chunk_file, "--num-chunks", str(n), "--chunk-idx", str(idx)], env))
    try:
        codes = run_children(commands)
    except StoppedBySignal as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}: the chunk processes were ended; answers written so far "
              "are kept, rerun the same command to resume", file=sys.stderr)
        return 128 + stop.signum
    if any(codes):
        failed = [i for i, c in enumerate(codes) if c]
        print(f"error: chunk(s) {failed} failed (exit codes {[codes[i] for i in failed]}); answers written so far are "
              "kept, rerun the same command to resume", file=sys.stderr)
        return 1
    lines = merge_chunks(chunk_files, merged)
    print(f"[{task.name}] merged {lines} answers -> {merged}")
    tokens_label = int(args.tokens) if name != "none" and args.tokens and args.tokens.isdigit() else None
    record = score(task.name, merged, data_root=data_root, checkpoint=ckpt, method=label,
                   visual_tokens=tokens_label)
    headline = record["headline"]
    print(f"[{task.name}] {record['headline_metric']} = {'n/a (server/GPT scored)' if headline is None else headline}"
          f" -> {record['results_file']}")
    return 0


class StoppedBySignal(Exception):
    """The runner received a stop signal; its children have been ended."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_children(commands: list[tuple[list[str], dict[str, str]]]) -> list[int]:
    """Start one process per ``(argv, env)`` and wait for all; their exit codes. On SIGTERM, SIGINT or SIGHUP
    every child still running gets SIGTERM and is waited for, then :class:`StoppedBySignal` is raised. (If this
    process is killed outright, the children end themselves: :mod:`llava.eval.parent_watch`.)"""
    procs: list[subprocess.Popen] = []

    def stop(signum, _frame):
        raise StoppedBySignal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        for argv, env in commands:
            procs.append(subprocess.Popen(argv, env=env))
        return [p.wait() for p in procs]
    except StoppedBySignal:
        for sig in STOP_SIGNALS:  # a second signal must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
