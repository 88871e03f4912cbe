"""Write a llava-hf copy of a LLaVA checkpoint (loading never needs one; this is for sharing or the hub).

    python -m llava.model.convert SRC DST [--vision-tower CLIP_DIR] [--dtype float16]

SRC may be either layout. DST gets the llava-hf layout: ``LlavaForConditionalGeneration`` weights and
config, the tokenizer with ``<image>`` and ``<pad>`` added (ids V and V + 1, as llava-hf has them; from an
original layout's ``tokenizer.model`` with the merges ordered by score), the LLaVA-1.5 preprocessing config and the
``processor_config.json`` that ``AutoProcessor`` needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llava.model.builder import load_pretrained_model
from llava.model.original_layout import CheckpointError
from llava.model.sentencepiece_tokenizer import LlamaSentencePieceTokenizer, fast_tokenizer_from_sentencepiece


def convert(src: str, dst: str, vision_tower: str | None = None, dtype: str = "float16") -> str:
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CheckpointError("DST must differ from SRC")
    if os.path.isdir(dst) and os.listdir(dst):
        raise CheckpointError(f"{dst} exists and is not empty; choose a new folder")
    tokenizer, model, image_processor, _ = load_pretrained_model(src, device="cpu", dtype=dtype, vision_tower=vision_tower)
    if isinstance(tokenizer, LlamaSentencePieceTokenizer):  # original layout: llava-hf ships a tokenizer.json
        tokenizer = fast_tokenizer_from_sentencepiece(
            tokenizer.vocab_file, legacy=tokenizer.legacy, add_bos_token=tokenizer.add_bos_token,
            add_eos_token=tokenizer.add_eos_token, model_max_length=tokenizer.model_max_length,
        )
    vocab = tokenizer.get_vocab()
    if "<image>" not in vocab:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if "<pad>" not in vocab:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if tokenizer.convert_tokens_to_ids("<image>") != model.config.image_token_id:
        raise CheckpointError(
            f"the tokenizer of {src} would give <image> id {tokenizer.convert_tokens_to_ids('<image>')}, "
            f"but the model uses {model.config.image_token_id}"
        )
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    os.makedirs(dst, exist_ok=True)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    config = image_processor.to_dict()
    config["image_processor_type"] = "LlavaImageProcessor"
    with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    vision = model.config.vision_config
    strategy = model.config.vision_feature_select_strategy
    with open(os.path.join(dst, "processor_config.json"), "w") as f:  # what AutoProcessor needs
        json.dump({"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": vision.patch_size,
                   "vision_feature_select_strategy": strategy, "num_additional_image_tokens": 1}, f, indent=2)
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--vision-tower", default=None, help="local CLIP folder overriding mm_vision_tower")
    parser.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, args.vision_tower, args.dtype)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote the llava-hf layout of {args.src} to {args.dst}")


if __name__ == "__main__":
    main()
