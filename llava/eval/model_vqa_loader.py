"""Short-answer benchmarks (GQA, TextVQA, POPE, MME, SEED, VizWiz, VQAv2): JSON-lines question files.

    python -m llava.eval.model_vqa_loader --model-path MODEL --question-file Q.jsonl --image-folder IMGS \\
        --answers-file A.jsonl [--method fastervlm --visual-token-num 64] [--batch-size 8]
"""

from llava.constants import MAX_NEW_TOKENS_LOADER
from llava.eval.questions import load_vqa_items
from llava.eval.runner import build_parser, main_with_errors, run


def main(argv=None) -> None:
    args = build_parser(__doc__.split("\n")[0], MAX_NEW_TOKENS_LOADER).parse_args(argv)
    main_with_errors(lambda: run(args, lambda: load_vqa_items(args.question_file, args.image_folder)))


if __name__ == "__main__":
    main()
