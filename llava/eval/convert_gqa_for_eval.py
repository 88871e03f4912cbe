"""GQA: LLaVA answers -> the official eval script's predictions file (``convert_gqa_for_eval``).

    python -m llava.eval.convert_gqa_for_eval --src answers.jsonl --dst data/testdev_balanced_predictions.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, run_cli, write_json
from llava.eval.benchmarks.gqa import convert_for_eval


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    args = p.parse_args(argv)
    write_json(args.dst, convert_for_eval(load_answers(args.src)[0]), indent=None)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
