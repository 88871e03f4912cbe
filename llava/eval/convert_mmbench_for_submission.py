"""MMBench: answers -> OpenCompass upload .xlsx (``convert_mmbench_for_submission``), plus the local
circular accuracy when the tsv has answers (rules: :mod:`llava.eval.benchmarks.mmbench`).

    python -m llava.eval.convert_mmbench_for_submission --annotation-file mmbench_dev_20230712.tsv \\
        --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 \\
        --experiment EXP
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.benchmarks.common import load_answers, read_tsv, run_cli
from llava.eval.benchmarks.mmbench import score_mmbench, write_upload


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True, help="the MMBench tsv")
    p.add_argument("--result-dir", required=True, help="folder with <experiment>.jsonl")
    p.add_argument("--upload-dir", required=True)
    p.add_argument("--experiment", required=True)
    args = p.parse_args(argv)
    header, rows = read_tsv(args.annotation_file, "MMBench tsv")
    answers = load_answers(Path(args.result_dir) / f"{args.experiment}.jsonl")[0]
    out = write_upload(Path(args.upload_dir) / f"{args.experiment}.xlsx", header, rows, answers)
    print(f"upload file: {out}")
    m = score_mmbench(answers, rows)
    if m is not None:
        print(f"local circular accuracy: {m['circular_accuracy']:.2f}% ({m['num_groups']} questions), "
              f"single-pass accuracy: {m['single_accuracy']:.2f}% ({m['num_attempts']} answers)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
