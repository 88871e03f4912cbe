"""SEED-Bench: accuracy per type / total / image / video and the upload file
(``convert_seed_for_submission``; rules: :mod:`llava.eval.benchmarks.seed`).

    python -m llava.eval.convert_seed_for_submission --annotation-file SEED-Bench.json \\
        --result-file answers.jsonl --result-upload-file answers_upload/EXP.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.benchmarks.common import load_answers, read_json, run_cli, write_jsonl
from llava.eval.benchmarks.seed import score_seed, upload_lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", required=True)
    p.add_argument("--result-upload-file")
    args = p.parse_args(argv)
    annotation = read_json(args.annotation_file, "SEED-Bench annotation")
    answers = load_answers(args.result_file)[0]
    m = score_seed(answers, annotation)
    for name, acc in m["per_type"].items():
        print(f"{name}: {acc:.2f}%")
    print(f"Total accuracy: {m['accuracy_total']:.2f}%")
    print(f"image accuracy: {m['accuracy_image']:.2f}%")
    print(f"video accuracy: {m['accuracy_video']:.2f}%")
    if args.result_upload_file:
        write_jsonl(args.result_upload_file, upload_lines(answers, annotation))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
