"""``vtc_llava``: LLaVA-1.5 and LLaVA-NeXT checkpoints (either layout) in lmms-eval, with any compression method.

    lmms-eval --model vtc_llava \\
        --model_args pretrained=checkpoints/llava-v1.5-7b,method=fastervlm,visual_token_num=64 \\
        --tasks pope,mme,scienceqa_img --batch_size 8 --log_samples --output_path logs/

Loading is :func:`llava.model.builder.load_pretrained_model` (both layouts, LLaVA-1.5's pad-to-square preprocessing,
LLaVA-NeXT's anyres or ``next_grid=fixed-672``), generation is :class:`llava.eval.inference.LlavaGenerator` (the
``vicuna_v1`` template by default, ``<image>\\n`` before the task's text as LLaVA's evaluation does, the vision tower
run once per image), and the method is applied per instance with :func:`llava.compression.apply`. Which family a
checkpoint belongs to comes from its ``config.json`` (:func:`llava.model.builder.checkpoint_family`); the family's
registered integration (:mod:`llava.compression.families`) refuses a method it does not integrate before any weights
load.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from llava.eval.lmms_plugin.base import CompressedLMM
from llava.eval.lmms_plugin.continuation import score_continuation

# checkpoint_family() value -> the registered compression family (llava.compression.families) it loads into.
# Qwen2.5-VL (llava.model.qwen2_5_vl, llava.eval.qwen_inference) is answered by its QwenGenerator: the lines marked
# "Qwen2.5-VL" below only run for a checkpoint that checkpoint_family() reports as "qwen2_5_vl".
QWEN_CHECKPOINT = "qwen2_5_vl"
FAMILY_OF_CHECKPOINT = {"llava": "llava-1.5", "llava_next": "llava-next", QWEN_CHECKPOINT: "qwen2.5-vl"}
PIXEL_OPTIONS = ("min_pixels", "max_pixels")  # Qwen2.5-VL's image processor range


def pixel_options(args: argparse.Namespace) -> dict[str, int]:
    """The Qwen2.5-VL pixel range given in ``--model_args`` (empty when none is)."""
    return {k: getattr(args, k) for k in PIXEL_OPTIONS if getattr(args, k) is not None}


def refuse_unintegrated_method(model_path: str, method_name: str) -> None:
    """Refuse, from the config files only, a checkpoint family vtc_llava does not answer with, or a method the
    family does not integrate."""
    from llava.compression.families import get_family
    from llava.compression.registry import CompressionConfigError, get_method
    from llava.model.builder import checkpoint_family
    from llava.model.original_layout import CheckpointError

    checkpoint = checkpoint_family(model_path)
    if checkpoint not in FAMILY_OF_CHECKPOINT:
        raise CheckpointError(f"{model_path} is a {checkpoint} checkpoint, which vtc_llava does not answer with yet "
                              f"(it takes {', '.join(FAMILY_OF_CHECKPOINT)})")
    spec = get_method(method_name)
    if not spec.stages:
        return
    try:
        family = get_family(FAMILY_OF_CHECKPOINT[checkpoint])
    except KeyError as err:
        raise CheckpointError(f"{model_path}: {err.args[0]}") from None
    reason = family.refusal(spec)
    if reason is not None:
        raise CompressionConfigError(reason + "; python -m llava.compression.families lists what applies")


class VTCLlava(CompressedLMM):
    """LLaVA-1.5 / LLaVA-NeXT (and Qwen2.5-VL once its family is in) with a compression method
    (``--model vtc_llava``)."""

    model_name = "vtc_llava"

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model-base", default=None, help="base model of a partial original-layout checkpoint")
        parser.add_argument("--vision-tower", default=None, help="local CLIP folder overriding mm_vision_tower")
        parser.add_argument("--conv-template", "--conv-mode", dest="conv_mode", default="vicuna_v1",
                            help="vicuna_v1 (LLaVA-1.5, LLaVA-1.6-Vicuna) | mistral_instruct | llava_v1")
        parser.add_argument("--next-grid", default="anyres", choices=["anyres", "fixed-672"],
                            help="LLaVA-NeXT only: anyres (as released) | fixed-672 (FasterVLM's 2880-token grid)")
        parser.add_argument("--min-pixels", type=int, default=None, help="Qwen2.5-VL only: the processor's min_pixels")
        parser.add_argument("--max-pixels", type=int, default=None, help="Qwen2.5-VL only: the processor's max_pixels")

    def validate(self, args: argparse.Namespace):
        from llava.compression.registry import config_from_args
        from llava.conversation import get_conversation
        from llava.model.builder import checkpoint_family, read_model_geometry
        from llava.model.original_layout import CheckpointError

        checkpoint = checkpoint_family(args.pretrained)
        if args.next_grid != "anyres" and checkpoint != "llava_next":
            raise CheckpointError(f"next_grid={args.next_grid} applies to LLaVA-NeXT checkpoints only; "
                                  f"{args.pretrained} is {checkpoint} (drop next_grid)")
        if pixel_options(args) and checkpoint != QWEN_CHECKPOINT:
            raise CheckpointError(f"min_pixels / max_pixels apply to Qwen2.5-VL checkpoints only; {args.pretrained} "
                                  f"is {checkpoint} (drop them)")
        geometry_options = {}
        if checkpoint == QWEN_CHECKPOINT:  # Qwen2.5-VL: its chat format and method defaults, as the entry points
            from llava.eval.runner import check_qwen_conv_mode, qwen_method_defaults

            check_qwen_conv_mode(args)
            qwen_method_defaults(args)
            geometry_options = {"max_pixels": args.max_pixels}
        else:
            get_conversation(args.conv_mode)  # an unknown template is refused here
        method = config_from_args(args, read_model_geometry(args.pretrained, args.vision_tower, **geometry_options))
        refuse_unintegrated_method(args.pretrained, method.name)
        return method

    def load(self, args: argparse.Namespace, device: str) -> None:
        from llava.compression import apply
        from llava.compression.registry import Stage, get_method
        from llava.eval.inference import LlavaGenerator
        from llava.model.builder import load_pretrained_model

        tokenizer, model, image_processor, _ = load_pretrained_model(
            args.pretrained, args.model_base, device=device, dtype=args.dtype,
            attn_implementation=args.attn_implementation, vision_tower=args.vision_tower, next_grid=args.next_grid,
            **pixel_options(args),
        )
        if self.method.name != "none":
            apply(model, self.method)
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.is_qwen = getattr(model.config, "model_type", None) == QWEN_CHECKPOINT
        if self.is_qwen:  # Qwen2.5-VL
            from llava.eval.qwen_inference import QwenGenerator

            self.generator = QwenGenerator(tokenizer, model, save_kept_tokens=args.save_kept_tokens)
        else:
            self.generator = LlavaGenerator(tokenizer, model, args.conv_mode, save_kept_tokens=args.save_kept_tokens)
        self.in_llm_method = Stage.LLM in get_method(self.method.name).stages

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _message_and_pixels(self, context: str, visuals: list[Any]):
        """The user message (``<image>\\n`` + text when the text has no placeholder), pixels and image size."""
        from PIL import Image

        if not visuals:
            return context, None, None
        if len(visuals) > 1 or not isinstance(visuals[0], Image.Image):
            kinds = ", ".join(type(v).__name__ for v in visuals)
            raise ValueError(f"{self.model_name} takes one image per question, got {len(visuals)} visual(s) ({kinds}); "
                             "use vtc_videollava for video tasks")
        processed = self.image_processor(images=visuals[0].convert("RGB"), return_tensors="pt")
        message = context if "<image>" in context else "<image>\n" + context
        grid = processed.get("image_grid_thw")
        if grid is not None:  # Qwen2.5-VL: all the image's patches, with its (t, h, w) grid
            return message, processed["pixel_values"], tuple(int(s) for s in grid[0])
        sizes = processed.get("image_sizes")
        image_size = None if sizes is None else tuple(int(s) for s in sizes[0])
        return message, processed["pixel_values"][0], image_size

    def generate_batch(self, contexts: list[str], visuals: list[list[Any]], settings) -> list:
        prepared = [self._message_and_pixels(c, v) for c, v in zip(contexts, visuals)]
        return self.generator.generate([m for m, _, _ in prepared], [p for _, p, _ in prepared], settings,
                                       image_sizes=[s for _, _, s in prepared])

    def score(self, context: str, continuation: str, visuals: list[Any]):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from llava.eval.inference import pad_crops

        if self.is_qwen:
            raise ValueError(f"{self.model_name}: loglikelihood (multiple-choice tasks) is not implemented for "
                             "Qwen2.5-VL yet; its generation tasks run")
        message, pixels, image_size = self._message_and_pixels(context, visuals)
        counts: list[int] = []
        trace: dict[str, Any] = {"visual_tokens": 0}
        encoder_outputs = None
        if pixels is not None:
            with torch.inference_mode():
                if self.generator.is_next:
                    sizes = torch.tensor([list(image_size)], dtype=torch.long)
                    features, traces = self.generator.encode_images(pad_crops([pixels]), sizes)
                else:
                    features, traces = self.generator.encode_images(pixels[None])
            trace = traces[0]
            counts = [trace["visual_tokens"]]
            encoder_outputs = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        prompt = self.generator.build_prompt(message)
        score = score_continuation(self.model, self.tokenizer, prompt, continuation, self.generator.image_token_id,
                                   counts, encoder_outputs, self.in_llm_method, self.generator.suppress)
        if self.in_llm_method:
            from llava.compression.families.decoder_pruning import last_trace

            trace = dict(trace, **(last_trace(self.model) or [{}])[0])
        return score, _loggable(trace, self.args.save_kept_tokens)


def _loggable(trace: dict[str, Any], save_kept_tokens: bool) -> dict[str, Any]:
    from llava.compression.families.decoder_pruning import KEPT_TOKEN_KEYS

    return {k: v for k, v in trace.items() if save_kept_tokens or k not in KEPT_TOKEN_KEYS}
