"""ScienceQA (``llava_test_CQM-A.json``), with or without images.

    python -m llava.eval.model_vqa_science --model-path MODEL --question-file llava_test_CQM-A.json \\
        --image-folder scienceqa/images/test --answers-file A.jsonl --single-pred-prompt
"""

from llava.constants import MAX_NEW_TOKENS_LONG
from llava.eval.questions import load_science_items
from llava.eval.runner import build_parser, main_with_errors, run


def main(argv=None) -> None:
    parser = build_parser(__doc__.split("\n")[0], MAX_NEW_TOKENS_LONG)
    parser.add_argument("--single-pred-prompt", action="store_true",
                        help="append \"Answer with the option's letter from the given choices directly.\"")
    args = parser.parse_args(argv)
    main_with_errors(lambda: run(args, lambda: load_science_items(
        args.question_file, args.image_folder, args.single_pred_prompt)))


if __name__ == "__main__":
    main()
