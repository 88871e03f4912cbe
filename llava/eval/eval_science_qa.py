"""ScienceQA scorer, LLaVA's ``eval_science_qa`` interface (rules: :mod:`llava.eval.benchmarks.science_qa`).

    python -m llava.eval.eval_science_qa --base-dir playground/data/eval/scienceqa \\
        --result-file answers.jsonl --output-file out_output.jsonl --output-result out_result.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, run_cli, write_json
from llava.eval.benchmarks.science_qa import load_science_qa, score_science_qa


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
    p.add_argument("--result-file", required=True, help="answers file (JSON lines)")
    p.add_argument("--output-file", help="write the correct/incorrect analyses here (JSON)")
    p.add_argument("--output-result", help="write acc/correct/count/results/outputs here (JSON)")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    problems, split_ids = load_science_qa(args.base_dir, args.split)
    answers, _ = load_answers(args.result_file)
    res = score_science_qa(problems, split_ids, answers)
    print(f"Total: {res.count}, Correct: {res.correct}, Accuracy: {res.accuracy:.2f}%, "
          f"IMG-Accuracy: {res.img_accuracy:.2f}%")
    if args.output_file:
        write_json(args.output_file, res.analyses)
    if args.output_result:
        write_json(args.output_result, res.result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
