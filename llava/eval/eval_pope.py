"""POPE scorer, LLaVA's ``eval_pope`` interface (rules: :mod:`llava.eval.benchmarks.pope`).

    python -m llava.eval.eval_pope --annotation-dir pope/coco --question-file pope/llava_pope_test.jsonl \\
        --result-file answers.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, read_jsonl, run_cli
from llava.eval.benchmarks.pope import load_labels, score_pope


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-dir", required=True, help="folder with coco_pope_<split>.json label files")
    p.add_argument("--question-file", required=True)
    p.add_argument("--result-file", required=True)
    args = p.parse_args(argv)
    labels = load_labels(args.annotation_dir)
    questions = read_jsonl(args.question_file, "question file")[0]
    answers = load_answers(args.result_file)[0]
    res = score_pope(answers, questions, labels)
    for split, m in res["splits"].items():
        print(f"Category: {split}, # samples: {m['num_answers']}")
        print("TP\tFP\tTN\tFN\t")
        print(f"{m['TP']}\t{m['FP']}\t{m['TN']}\t{m['FN']}")
        for name, key in (("Accuracy", "accuracy"), ("Precision", "precision"), ("Recall", "recall"),
                          ("F1 score", "f1"), ("Yes ratio", "yes_ratio")):
            print(f"{name}: {m[key] / 100}")
        print(", ".join(f"{m[k] / 100:.3f}" for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")))
        print("====================================")
    for w in res["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"Average F1 score: {res['mean_f1']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
