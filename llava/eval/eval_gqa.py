"""GQA testdev-balanced accuracy as the patched official ``eval.py`` computes it for LLaVA
(rules: :mod:`llava.eval.benchmarks.gqa`).

    python -m llava.eval.eval_gqa --questions gqa/data/testdev_balanced_questions.json \\
        (--answers-file answers.jsonl | --predictions testdev_balanced_predictions.json)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import ScorerInputError, load_answers, read_json, run_cli
from llava.eval.benchmarks.gqa import convert_for_eval, score_gqa


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", required=True, help="testdev_balanced_questions.json")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--answers-file", help="LLaVA answers (converted with rstrip('.').lower())")
    src.add_argument("--predictions", help="an already converted [{questionId, prediction}] file")
    args = p.parse_args(argv)
    questions = read_json(args.questions, "GQA questions file")
    if args.answers_file:
        preds = convert_for_eval(load_answers(args.answers_file)[0])
    else:
        preds = read_json(args.predictions, "GQA predictions file")
        if not isinstance(preds, list) or any(not isinstance(x, dict) or not {"questionId", "prediction"} <= x.keys()
                                              for x in preds):
            raise ScorerInputError(f"{args.predictions} is not a list of {{questionId, prediction}} records")
    m = score_gqa(questions, preds)
    print(f"Binary: {m['binary']:.2f}%\nOpen: {m['open']:.2f}%\nAccuracy: {m['accuracy']:.2f}%")
    if m["num_missing"]:
        print(f"warning: {m['num_missing']} balanced questions have no prediction (scored wrong)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
