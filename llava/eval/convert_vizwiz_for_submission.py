"""VizWiz: answers -> EvalAI upload JSON (``convert_vizwiz_for_submission``; rules: :mod:`llava.eval.benchmarks.vizwiz`).

    python -m llava.eval.convert_vizwiz_for_submission --annotation-file vizwiz/llava_test.jsonl \\
        --result-file answers.jsonl --result-upload-file answers_upload/EXP.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, read_jsonl, run_cli, write_json
from llava.eval.benchmarks.vizwiz import upload_answers


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True, help="the question file, llava_test.jsonl")
    p.add_argument("--result-file", required=True)
    p.add_argument("--result-upload-file", required=True)
    args = p.parse_args(argv)
    answers, bad = load_answers(args.result_file, tolerant=True)
    questions = read_jsonl(args.annotation_file, "VizWiz question file")[0]
    print(f"total results: {len(answers)}, total split: {len(questions)}, error_line: {bad}")
    write_json(args.result_upload_file, upload_answers(answers, questions), indent=None)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
