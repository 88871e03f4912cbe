"""MM-Vet: answers -> the official grader's ``{"v1_<id>": answer}`` file (``convert_mmvet_for_eval``).

    python -m llava.eval.convert_mmvet_for_eval --src answers.jsonl --dst results/EXP.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, run_cli, write_json
from llava.eval.benchmarks.open_ended import mmvet_results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    args = p.parse_args(argv)
    write_json(args.dst, mmvet_results(load_answers(args.src)[0]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
