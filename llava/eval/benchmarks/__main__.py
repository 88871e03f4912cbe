"""``python -m llava.eval.benchmarks {list,score}``: list the registry, or score an answers file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .common import ScorerInputError, run_cli
from .registry import DEFAULT_DATA_ROOT, TASKS, score


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered benchmarks")
    s = sub.add_parser("score", help="score an answers file and write its results file")
    s.add_argument("benchmark", choices=sorted(TASKS))
    s.add_argument("--answers-file", required=True)
    s.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding <bench>/ data folders")
    s.add_argument("--checkpoint", help="checkpoint name (default: the answers' model_id)")
    s.add_argument("--method", help="method name (default: metadata.method, else 'none')")
    s.add_argument("--method-args", help="method arguments as JSON (default: metadata.method_args)")
    s.add_argument("--visual-tokens", type=int, help="token budget label (default: from metadata)")
    s.add_argument("--results-file", help="where to write the results JSON (default: the standard path)")
    s.add_argument("--question-file", help="override the registry's question file")
    s.add_argument("--annotation-file",
                   help="annotation override (POPE: label folder; MME: benchmark folder; VQAv2/VizWiz: "
                        "enables a local accuracy)")
    s.add_argument("--converted-file", help="where to write the upload / converted file")
    s.add_argument("--no-converted", action="store_true", help="do not write the upload / converted file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for t in TASKS.values():
            flags = " ".join(t.extra_args)
            print(f"{t.name:11s} {t.title:28s} {t.data_dir}/{t.question_file}  {t.entry_point} {flags}"
                  f"  max_new_tokens={t.max_new_tokens}  headline={t.headline_metric}")
        return 0
    method_args = None
    if args.method_args:
        try:
            method_args = json.loads(args.method_args)
        except json.JSONDecodeError as e:
            raise ScorerInputError(f"--method-args is not valid JSON ({e.msg})") from None
        if not isinstance(method_args, dict):
            raise ScorerInputError("--method-args must be a JSON object")
    rec = score(args.benchmark, args.answers_file, data_root=args.data_root, checkpoint=args.checkpoint,
                method=args.method, method_args=method_args, visual_tokens=args.visual_tokens,
                results_file=args.results_file, question_file=args.question_file,
                annotation_file=args.annotation_file, converted_file=args.converted_file,
                write_converted=not args.no_converted)
    head = "n/a (server / judge scored)" if rec["headline"] is None else f"{rec['headline']:.2f}"
    print(f"{rec['benchmark']} {rec['checkpoint']} {rec['method']} tokens={rec['visual_tokens']}: "
          f"{rec['headline_metric']} = {head}")
    for w in rec["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if rec["converted_file"]:
        print(f"converted file: {rec['converted_file']}")
    print(f"results file: {rec['results_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
