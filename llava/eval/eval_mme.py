"""MME: ``convert_answer_to_mme.py`` + the official ``eval_tool/calculation.py`` in one step
(rules: :mod:`llava.eval.benchmarks.mme`).

    python -m llava.eval.eval_mme --answers-file MME/answers/EXP.jsonl \\
        --mme-dir MME/MME_Benchmark_release_version [--results-dir MME/eval_tool/answers/EXP]

``--results-dir`` also writes the per-subtask files the official tool reads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, run_cli
from llava.eval.benchmarks.mme import (
    COGNITION,
    PERCEPTION,
    convert_answers,
    load_ground_truth,
    score_mme,
    write_eval_tool_files,
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers-file", required=True)
    p.add_argument("--mme-dir", required=True, help="MME_Benchmark_release_version folder")
    p.add_argument("--results-dir", help="write <subtask>.txt files for the official eval tool here")
    args = p.parse_args(argv)
    rows = convert_answers(load_answers(args.answers_file)[0], load_ground_truth(args.mme_dir))
    if args.results_dir:
        write_eval_tool_files(rows, args.results_dir)
    m = score_mme(rows)
    for group, names in (("Perception", PERCEPTION), ("Cognition", COGNITION)):
        print(f"=========== {group} ===========")
        print(f"total score: {m[group.lower()]}\n")
        for name in names:
            if name in m["subtasks"]:
                print(f"\t {name}  score: {m['subtasks'][name]['score']}")
        print()
    if m["missing_subtasks"]:
        print(f"warning: no answers for {', '.join(m['missing_subtasks'])} (scored 0)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
