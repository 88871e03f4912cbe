"""Open-ended benchmarks (MM-Vet, LLaVA-Bench-in-the-Wild): JSON-lines question files, long answers.

    python -m llava.eval.model_vqa --model-path MODEL --question-file Q.jsonl --image-folder IMGS \\
        --answers-file A.jsonl
"""

from llava.constants import MAX_NEW_TOKENS_LONG
from llava.eval.questions import load_vqa_items
from llava.eval.runner import build_parser, main_with_errors, run


def main(argv=None) -> None:
    args = build_parser(__doc__.split("\n")[0], MAX_NEW_TOKENS_LONG).parse_args(argv)
    main_with_errors(lambda: run(args, lambda: load_vqa_items(args.question_file, args.image_folder)))


if __name__ == "__main__":
    main()
