"""VQAv2: answers -> EvalAI upload JSON (``convert_vqav2_for_submission``; rules: :mod:`llava.eval.benchmarks.vqav2`).

Upstream layout (``--dir --split --ckpt``): reads ``<dir>/answers/<split>/<ckpt>/merge.jsonl`` and
``<dir>/llava_vqav2_mscoco_test2015.jsonl``, writes ``<dir>/answers_upload/<split>/<ckpt>.json``.
``--src``/``--dst``/``--test-file`` override those paths.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.benchmarks.common import ScorerInputError, load_answers, read_jsonl, run_cli, write_json
from llava.eval.benchmarks.vqav2 import upload_answers


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="./playground/data/eval/vqav2")
    p.add_argument("--ckpt")
    p.add_argument("--split")
    p.add_argument("--src")
    p.add_argument("--dst")
    p.add_argument("--test-file")
    args = p.parse_args(argv)
    base = Path(args.dir)
    if not (args.src and args.dst) and not (args.ckpt and args.split):
        raise ScorerInputError("give --ckpt and --split (upstream layout) or --src and --dst")
    src = Path(args.src) if args.src else base / "answers" / args.split / args.ckpt / "merge.jsonl"
    dst = Path(args.dst) if args.dst else base / "answers_upload" / args.split / f"{args.ckpt}.json"
    test_file = Path(args.test_file) if args.test_file else base / "llava_vqav2_mscoco_test2015.jsonl"
    answers, bad = load_answers(src, tolerant=True)
    test_split = read_jsonl(test_file, "VQAv2 test2015 list")[0]
    print(f"total results: {len(answers)}, total split: {len(test_split)}, error_line: {bad}")
    write_json(dst, upload_answers(answers, test_split), indent=None)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
