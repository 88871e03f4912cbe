"""TextVQA scorer, LLaVA's ``eval_textvqa`` interface (rules: :mod:`llava.eval.benchmarks.textvqa`).

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.benchmarks.common import ScorerInputError, load_answers, run_cli
from llava.eval.benchmarks.textvqa import load_annotation, score_textvqa


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", help="one answers file")
    p.add_argument("--result-dir", help="score every *.jsonl in this folder")
    args = p.parse_args(argv)
    files = [Path(args.result_file)] if args.result_file else []
    if args.result_dir:
        folder = Path(args.result_dir)
        if not folder.is_dir():
            raise ScorerInputError(f"result folder not found: {folder}")
        files += sorted(f for f in folder.iterdir() if f.suffix == ".jsonl")
    if not files:
        raise ScorerInputError("give --result-file or --result-dir")
    annotation = load_annotation(args.annotation_file)
    for f in files:
        m = score_textvqa(load_answers(f)[0], annotation)
        print(f"{f.stem}\nSamples: {m['num_scored']}\nAccuracy: {m['accuracy']:.2f}%\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
