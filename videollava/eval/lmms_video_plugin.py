"""``vtc_videollava``: Video-LLaVA (either layout) in lmms-eval, with any video compression method.

    lmms-eval --model vtc_videollava \\
        --model_args pretrained=checkpoints/Video-LLaVA-7B,method=fastervlm,visual_token_num=64,budget_mode=global \\
        --tasks activitynetqa --batch_size 4 --log_samples --output_path logs/

The video QA entry point's pieces (:mod:`videollava.eval.run_inference_video_qa`): loading with
:func:`videollava.model.builder.load_pretrained_model`, 8 frames sampled and preprocessed by the checkpoint's
processor, the ``llava_v1`` prompt with one ``<image>`` per frame before the task's text, generation with
:class:`videollava.model.generation.VideoLlavaGenerator`, and the method validated as ``--method`` is there (plus the
family's ``budget_mode`` / ``keep_cls``). Each document gives one video path (lmms-eval's video tasks return the file
path from ``doc_to_visual``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from llava.eval.lmms_plugin.base import CompressedLMM
from llava.eval.lmms_plugin.continuation import score_continuation

VIDEOLLAVA_MODEL_ID = "vtc_videollava"
VIDEOLLAVA_CLASS_PATH = "videollava.eval.lmms_video_plugin.VTCVideoLlava"


def manifests():
    """The entry point's payload: lmms-eval's ``ModelManifest`` of ``vtc_videollava``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=VIDEOLLAVA_MODEL_ID, simple_class_path=VIDEOLLAVA_CLASS_PATH)]


class VTCVideoLlava(CompressedLMM):
    """Video-LLaVA with a compression method (``--model vtc_videollava``)."""

    model_name = VIDEOLLAVA_MODEL_ID

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from videollava.model.processing import VIDEO_CONV_MODE, VIDEO_TRANSFORMS

        parser.add_argument("--video-tower", default=None, help="local LanguageBind_Video_merge folder (original layout)")
        parser.add_argument("--image-tower", default=None, help="local LanguageBind_Image folder (original layout)")
        parser.add_argument("--conv-template", "--conv-mode", dest="conv_mode", default=VIDEO_CONV_MODE)
        parser.add_argument("--video-transform", choices=VIDEO_TRANSFORMS, default=None)
        parser.add_argument("--frame-backend", choices=["auto", "decord", "pyav"], default="auto")
        parser.add_argument("--vision-hidden-act", choices=["gelu", "quick_gelu"], default=None)
        parser.add_argument("--budget-mode", choices=["per-frame", "global"], default=None,
                            help="per-frame (default) | global (fastervlm): the budget over the whole video")
        parser.add_argument("--keep-cls", action=argparse.BooleanOptionalAction, default=None,
                            help="also give the LLM each frame's [CLS] token")

    def validate(self, args: argparse.Namespace):
        from llava.compression.registry import config_from_args
        from videollava.model import family as video_family
        from videollava.model.builder import read_video_model_geometry
        from videollava.model.processing import build_video_prompt

        build_video_prompt("", conv_mode=args.conv_mode)  # an unknown template is refused here
        spec = video_family.check_video_method(args.method, args.budget_mode, args.keep_cls)
        geometry = read_video_model_geometry(args.pretrained, args.video_tower)
        method = config_from_args(args, video_family.method_geometry(spec, geometry))
        return video_family.build_video_config(method, geometry, args.budget_mode, args.keep_cls)

    def load(self, args: argparse.Namespace, device: str) -> None:
        import llava.compression as vtc
        from llava.compression.registry import Stage, get_method
        from videollava.model.builder import load_pretrained_model
        from videollava.model.generation import VideoLlavaGenerator

        tokenizer, model, processor, _ = load_pretrained_model(
            args.pretrained, device=device, dtype=args.dtype, attn_implementation=args.attn_implementation,
            video_tower=args.video_tower, image_tower=args.image_tower, video_transform=args.video_transform,
            frame_backend=args.frame_backend, vision_hidden_act=args.vision_hidden_act,
        )
        vtc.apply(model, self.method, budget_mode=args.budget_mode, keep_cls=args.keep_cls)
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.generator = VideoLlavaGenerator(tokenizer, model, args.conv_mode, save_kept_tokens=args.save_kept_tokens)
        self.in_llm_method = Stage.LLM in get_method(self.method.name).stages
        self.seed = int(getattr(args, "seed", None) or 0)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _video(self, visuals: list[Any]) -> torch.Tensor:
        if len(visuals) != 1 or not isinstance(visuals[0], str):
            kinds = ", ".join(type(v).__name__ for v in visuals) or "none"
            raise ValueError(f"{self.model_name} takes one video file per question, got {len(visuals)} visual(s) "
                             f"({kinds}); use vtc_llava for image tasks")
        return self.processor(visuals[0])

    def generate_batch(self, contexts: list[str], visuals: list[list[Any]], settings) -> list:
        videos = [self._video(v) for v in visuals]
        return self.generator.generate(contexts, videos, settings, seed=self.seed)

    def score(self, context: str, continuation: str, visuals: list[Any]):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from llava.compression.families.decoder_pruning import KEPT_TOKEN_KEYS
        from videollava.model.family import llm_trace

        with torch.inference_mode():
            features, traces = self.generator.encode_videos(self._video(visuals)[None])
        trace = traces[0]
        encoder_outputs = {"video": BaseModelOutputWithPooling(pooler_output=torch.cat(features).unsqueeze(0))}
        score = score_continuation(self.model, self.tokenizer, self.generator.build_prompt(context), continuation,
                                   self.generator.video_token_id, trace["tokens_per_frame"], encoder_outputs,
                                   self.in_llm_method, self.generator.suppress)
        if self.in_llm_method:
            trace = dict(trace, **(llm_trace(self.model, 1) or [{}])[0])
        if not self.args.save_kept_tokens:
            trace = {k: v for k, v in trace.items() if k not in KEPT_TOKEN_KEYS}
        return score, trace
