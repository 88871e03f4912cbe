"""Batched Video-LLaVA generation as the original video QA script does it, with any video compression method.

For one batch of (question, video pixels ``[T, 3, 224, 224]``):

1. the videos are encoded once with ``model.model.get_video_features`` (overridden per instance by
   ``llava.compression.apply`` when a method is applied, see :mod:`videollava.model.family`): one ``[n_v, D]`` tensor and one trace per
   video, with the tokens each frame kept (257 per frame, [CLS] first, without compression);
2. each prompt (``llava_v1``, ``<image>`` x T then ``\\n`` and the raw question) is tokenised chunk-wise around the
   ``<image>`` strings (:func:`llava.mm_utils.tokenizer_image_token`) and the t-th ``<image>`` becomes a run of
   exactly as many ``<video>`` ids as frame t kept;
3. rows are left-padded and ``generate()`` gets the features as ``mm_encoder_outputs={"video": ...}``;
4. only new tokens are decoded (``skip_special_tokens``), stripped, a trailing ``</s>`` removed (section 10).

Greedy by default; ``temperature > 0`` samples (seed it with ``seed``).
"""

from __future__ import annotations

from typing import Any

import torch

from llava.compression.families.decoder_pruning import KEPT_TOKEN_KEYS
from llava.eval.inference import GenerationSettings, SampleResult, build_generation_config, left_pad
from llava.mm_utils import tokenizer_image_token
from videollava.model.builder import suppressed_token_ids
from videollava.model.family import llm_trace
from videollava.model.processing import VIDEO_CONV_MODE, build_video_prompt


class VideoLlavaGenerator:
    """Answers batches of video questions.

    Args:
        tokenizer, model: as returned by :func:`videollava.model.builder.load_pretrained_model`.
        conv_mode: conversation template (``llava_v1``, hard-coded by Video-LLaVA's QA script).
        num_frames: frames per video (the model's, 8).
        save_kept_tokens: keep each frame's ``kept_indices`` in the trace.
    """

    def __init__(self, tokenizer, model, conv_mode: str = VIDEO_CONV_MODE, num_frames: int | None = None,
                 save_kept_tokens: bool = False):
        self.tokenizer, self.model = tokenizer, model
        self.conv_mode = conv_mode
        info = getattr(model, "videollava_load_info", None)
        self.num_frames = num_frames or (info.num_frames if info is not None else 8)
        self.save_kept_tokens = save_kept_tokens
        self.video_token_id = model.config.video_token_id
        self.suppress = suppressed_token_ids(tokenizer, model.config)
        build_video_prompt("", self.num_frames, conv_mode)  # validates conv_mode

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def encode_videos(self, pixel_values_videos: torch.Tensor) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """``[B, T, 3, H, W]`` -> one ``[n_v, D]`` tensor and one trace dict per video."""
        b, t = pixel_values_videos.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"the model takes {self.num_frames} frames per video, got {t}")
        out = self.model.model.get_video_features(pixel_values_videos=pixel_values_videos.to(self.device, self.dtype))
        videos = getattr(out, "features_per_video", None)
        traces = getattr(out, "compression_trace", None)
        if videos is None:
            pooled = out.pooler_output  # [B*T, N+1, D]: every token of every frame, [CLS] first
            per_frame = pooled.shape[1]
            videos = list(pooled.reshape(b, t * per_frame, -1))
            traces = [{"visual_tokens": t * per_frame, "tokens_per_frame": [per_frame] * t, "keep_cls": True}
                      for _ in range(b)]
        return list(videos), [dict(tr) for tr in traces]

    def build_prompt(self, question: str) -> str:
        return build_video_prompt(question, self.num_frames, self.conv_mode)

    def prompt_ids(self, question: str, tokens_per_frame: list[int]) -> list[int]:
        return tokenizer_image_token(self.build_prompt(question), self.tokenizer, self.video_token_id, tokens_per_frame)

    def generation_config(self, settings: GenerationSettings):
        return build_generation_config(settings, self.tokenizer, self.suppress)

    @torch.inference_mode()
    def generate(self, questions: list[str], videos: list[torch.Tensor], settings: GenerationSettings,
                 seed: int | None = None) -> list[SampleResult]:
        """Answers for one batch; ``videos[i]`` is ``[T, 3, H, W]``. ``seed`` seeds sampling (``temperature > 0``)."""
        if len(questions) != len(videos) or not questions:
            raise ValueError("one video per question (and at least one question) is required")
        features, traces = self.encode_videos(torch.stack(videos))
        rows = [self.prompt_ids(q, tr["tokens_per_frame"]) for q, tr in zip(questions, traces)]
        input_ids, attention_mask = left_pad(rows, self.tokenizer.pad_token_id, self.device)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = torch.cat(features).unsqueeze(0)  # [1, sum n_v, D]: scattered row by row, in order
        if settings.temperature > 0 and seed is not None:
            torch.manual_seed(seed)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self.generation_config(settings),
            mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=pooled)},
        )
        extra = llm_trace(self.model, len(questions))  # an in-LLM method's per-row token counts
        if extra:
            traces = [dict(t, **e) for t, e in zip(traces, extra)]
        texts = self.tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        results = []
        for text, trace in zip(texts, traces):
            text = text.strip()
            if text.endswith("</s>"):
                text = text[: -len("</s>")].strip()
            if not self.save_kept_tokens:
                trace = {k: v for k, v in trace.items() if k not in KEPT_TOKEN_KEYS}
            results.append(SampleResult(text, trace))
        return results
