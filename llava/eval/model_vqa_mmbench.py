"""MMBench / MMBench-CN (a tsv with base64 images and A-D options).

    python -m llava.eval.model_vqa_mmbench --model-path MODEL --question-file mmbench_dev_20230712.tsv \\
        --answers-file A.jsonl --single-pred-prompt [--lang cn] [--all-rounds]

The prompt is ``[hint\\n]question\\nA. ..\\nB. ..`` (options stop at the first missing one), then the
answer-with-a-letter instruction. With ``--all-rounds`` the option texts rotate once per option (the
letters stay A, B, ...), one answer per round with ``round_id``, ``options`` and ``option_char``, which
the circular scorer uses. Resume keys on (question id, round).
"""

from __future__ import annotations

import csv
import os
import sys

from llava.constants import DEFAULT_IMAGE_TOKEN, MAX_NEW_TOKENS_LONG
from llava.eval.questions import SINGLE_PRED_PROMPT, EvalItem, QuestionFileError
from llava.eval.runner import build_parser, main_with_errors, run

ALL_OPTIONS = ("A", "B", "C", "D")
SINGLE_PRED_PROMPT_CN = "请直接回答选项字母。"


def is_none(value) -> bool:
    """pandas-style missing cell: empty, or the strings 'nan' / 'none' (any case)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none"))


def read_tsv(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise QuestionFileError(f"question file not found: {path} (check --question-file)")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"index", "question", "image", "A", "B"} <= set(rows[0]):
        raise QuestionFileError(
            f"{path}: not an MMBench tsv (expected columns index, question, hint, A, B, C, D, image; "
            f"found {sorted(rows[0])})"
        )
    return rows


def load_mmbench_items(path: str, single_pred_prompt: bool, lang: str = "en", all_rounds: bool = False) -> list[EvalItem]:
    items = []
    for row in read_tsv(path):
        options = []
        for letter in ALL_OPTIONS:
            if is_none(row.get(letter)):
                break
            options.append(row[letter])
        option_chars = list(ALL_OPTIONS[: len(options)])
        for round_id in range(len(options) if all_rounds else 1):
            question = row["question"]
            if not is_none(row.get("hint")):
                question = row["hint"] + "\n" + question
            for letter, option in zip(ALL_OPTIONS, options):
                question = question + "\n" + letter + ". " + option
            message = DEFAULT_IMAGE_TOKEN + "\n" + question
            if single_pred_prompt:
                message = message + "\n" + (SINGLE_PRED_PROMPT_CN if lang == "cn" else SINGLE_PRED_PROMPT)
            index = int(row["index"]) if row["index"].lstrip("-").isdigit() else row["index"]
            items.append(EvalItem(
                question_id=index, message=message, prompt=question, image_path=None, image_b64=row["image"],
                convert_rgb=False,
                extra={"round_id": round_id, "options": list(options), "option_char": list(option_chars)},
            ))
            options = options[1:] + options[:1]
            option_chars = option_chars[1:] + option_chars[:1]
    return items


def main(argv=None) -> None:
    parser = build_parser(__doc__.split("\n")[0], MAX_NEW_TOKENS_LONG)
    parser.add_argument("--single-pred-prompt", action="store_true")
    parser.add_argument("--lang", choices=["en", "cn"], default="en")
    parser.add_argument("--all-rounds", action="store_true", help="rotate the options once per option (circular)")
    args = parser.parse_args(argv)
    main_with_errors(lambda: run(args, lambda: load_mmbench_items(
        args.question_file, args.single_pred_prompt, args.lang, args.all_rounds)))


if __name__ == "__main__":
    main()
