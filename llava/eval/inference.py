"""Batched LLaVA-1.5 / LLaVA-NeXT generation, as the original evaluation does it, with any compression method.

Flow for one batch (ARCHITECTURE.md, "What flows through an evaluation"):

1. the images present in the batch are encoded once with ``model.model.get_image_features`` (a method
   applied with :func:`llava.compression.apply` overrides it per instance and reports a per-image trace);
2. each prompt (``vicuna_v1`` template) is tokenised chunk-wise around ``<image>`` and the placeholder
   becomes a run of exactly as many image tokens as that image kept;
3. rows are left-padded and ``generate()`` receives the features as ``mm_encoder_outputs``, so the
   vision tower runs once per image and never on the padded rows;
4. only the new tokens are decoded (``skip_special_tokens``, ``.strip()``), as LLaVA does.

LLaVA-NeXT (LLaVA-1.6): each image is ``[crops, 3, H, W]`` (base image + anyres crops) with its ``(height, width)``
size; images with different crop counts are zero-padded to the batch's largest count (the model reads each image's
own count from its size and ignores the padding), and each image's run of tokens is as long as its own features
(unpadded rows + ``image_newline`` per row, or 2880 with ``fixed-672``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llava.compression.families.decoder_pruning import KEPT_TOKEN_KEYS
from llava.conversation import get_conversation
from llava.mm_utils import tokenizer_image_token
from llava.model.checkpoint import suppressed_token_ids


@dataclass(frozen=True)
class GenerationSettings:
    """The decoding flags of the research scripts. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ValueError(f"--num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class SampleResult:
    text: str
    trace: dict[str, Any] = field(default_factory=dict)


def build_generation_config(settings: GenerationSettings, tokenizer, suppress_tokens: list[int]):
    """A fresh ``GenerationConfig`` (nothing inherited from a hub ``generation_config.json``): greedy unless
    ``temperature > 0``, KV cache on, the tokenizer's special ids, ``suppress_tokens`` never generated."""
    from transformers import GenerationConfig

    sampling = settings.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": sampling,
        "num_beams": settings.num_beams,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "suppress_tokens": suppress_tokens,
    }
    if sampling:
        kwargs["temperature"] = settings.temperature
        kwargs["top_p"] = settings.top_p if settings.top_p is not None else 1.0
    return GenerationConfig(**kwargs)


def sample_results(tokenizer: Any, output: Any, prompt_length: int, traces: list[dict[str, Any]],
                   save_kept_tokens: bool) -> list[SampleResult]:
    """One :class:`SampleResult` per batch row of ``generate``'s ``output``: the text after the ``prompt_length``
    prompt tokens, and the row's trace with the in-LLM method's (one dict per batch row on the result, per-layer
    token counts) merged in; kept indices only with ``save_kept_tokens``."""
    llm_traces = getattr(output, "llm_compression_trace", None)
    if llm_traces:
        traces = [dict(t, **extra) for t, extra in zip(traces, llm_traces)]
    texts = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    results = []
    for text, trace in zip(texts, traces):
        if not save_kept_tokens:
            trace = {k: v for k, v in trace.items() if k not in KEPT_TOKEN_KEYS}
        results.append(SampleResult(text.strip(), trace))
    return results


class LlavaGenerator:
    """Generates answers for batches of (message, pixel_values) pairs.

    Args:
        tokenizer, model: as returned by :func:`llava.model.builder.load_pretrained_model`.
        conv_mode: conversation template (``vicuna_v1`` for LLaVA-1.5).
        save_kept_tokens: keep the kept visual-token indices in each sample's trace (``kept_indices`` of a method
            before the LLM, ``llm_kept_indices`` of an in-LLM one: pruning layer -> the tokens entering it).
    """

    def __init__(self, tokenizer, model, conv_mode: str = "vicuna_v1", save_kept_tokens: bool = False):
        get_conversation(conv_mode)  # validates the name
        self.tokenizer = tokenizer
        self.model = model
        self.conv_mode = conv_mode
        self.save_kept_tokens = save_kept_tokens
        self.image_token_id = model.config.image_token_id
        self.is_next = hasattr(model.config, "image_grid_pinpoints")
        self.suppress = suppressed_token_ids(tokenizer, model.config)

    def build_prompt(self, message: str) -> str:
        conv = get_conversation(self.conv_mode)
        conv.append_message(conv.roles[0], message)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def encode_images(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Image features (one ``[k_i, D]`` tensor per image) and one trace dict per image. LLaVA-NeXT needs
        ``image_sizes`` (``[images, 2]``, height and width) with ``pixel_values`` of ``[images, crops, 3, H, W]``."""
        dtype = self.model.get_input_embeddings().weight.dtype
        kwargs: dict[str, Any] = {}
        if image_sizes is not None:
            kwargs["image_sizes"] = image_sizes.to(self.device)
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(self.device, dtype), **kwargs)
        features = list(out.pooler_output)
        traces = getattr(out, "compression_trace", None) or [{} for _ in features]
        traces = [dict(t, visual_tokens=int(f.shape[0])) for t, f in zip(traces, features)]
        return features, traces

    def generation_config(self, settings: GenerationSettings):
        return build_generation_config(settings, self.tokenizer, self.suppress)

    @torch.inference_mode()
    def generate(
        self,
        messages: list[str],
        pixel_values: list[torch.Tensor | None],
        settings: GenerationSettings,
        image_sizes: list[tuple[int, int] | None] | None = None,
    ) -> list[SampleResult]:
        """Answers for one batch. ``pixel_values[i]`` is ``[3, H, W]`` (LLaVA-1.5), ``[crops, 3, H, W]`` with
        ``image_sizes[i] = (height, width)`` (LLaVA-NeXT), or ``None`` (text-only question)."""
        if len(messages) != len(pixel_values):
            raise ValueError("one pixel_values entry (or None) per message is required")
        with_image = [i for i, p in enumerate(pixel_values) if p is not None]
        features: list[torch.Tensor] = []
        traces: list[dict[str, Any]] = [{"visual_tokens": 0} for _ in messages]
        if with_image:
            if self.is_next:
                if image_sizes is None or any(image_sizes[i] is None for i in with_image):
                    raise ValueError("a LLaVA-NeXT model needs each image's (height, width) in image_sizes")
                stacked = pad_crops([pixel_values[i] for i in with_image])
                sizes = torch.tensor([list(image_sizes[i]) for i in with_image], dtype=torch.long)
                features, image_traces = self.encode_images(stacked, sizes)
            else:
                features, image_traces = self.encode_images(torch.stack([pixel_values[i] for i in with_image]))
            for i, trace in zip(with_image, image_traces):
                traces[i] = trace

        rows = []
        for i, message in enumerate(messages):
            prompt = self.build_prompt(message)
            n_placeholders = prompt.count("<image>")
            if n_placeholders != (1 if pixel_values[i] is not None else 0):
                raise ValueError(
                    f"message {i} has {n_placeholders} <image> placeholders but "
                    f"{'an image' if pixel_values[i] is not None else 'no image'}"
                )
            rows.append(tokenizer_image_token(prompt, self.tokenizer, self.image_token_id, traces[i]["visual_tokens"]))

        input_ids, attention_mask = left_pad(rows, self.tokenizer.pad_token_id, self.device)
        kwargs: dict[str, Any] = {}
        if features:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self.generation_config(settings),
            **kwargs,
        )
        return sample_results(self.tokenizer, output, input_ids.shape[1], traces, self.save_kept_tokens)


def pad_crops(crops: list[torch.Tensor]) -> torch.Tensor:
    """``[images, max crops, 3, H, W]`` from one ``[crops_i, 3, H, W]`` tensor per image, zero-padded at the end
    (LLaVA-NeXT keeps only the first ``crops_i`` of each image, counted from its size)."""
    most = max(c.shape[0] for c in crops)
    out = crops[0].new_zeros((len(crops), most, *crops[0].shape[1:]))
    for i, c in enumerate(crops):
        out[i, : c.shape[0]] = c
    return out


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` input ids and attention mask, padded on the left to the longest row."""
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, length - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)
