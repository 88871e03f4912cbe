"""Batched Qwen2.5-VL generation with any compression method the family runs (the image entry points' generator
for Qwen2.5-VL checkpoints; :class:`llava.eval.inference.LlavaGenerator` is LLaVA's).

One batch:

1. the images present are encoded once (``model.model.get_image_features`` on the concatenated patches with their
   ``image_grid_thw``; a pre-LLM method applied with :func:`llava.compression.apply` reduces each image there);
2. each prompt is Qwen2.5-VL's chat format (:func:`llava.model.qwen2_5_vl.build_prompt`): the benchmark's message
   unchanged (question text and answer-format suffix), its ``<image>`` replaced by the vision block whose
   ``<|image_pad|>`` run has the image's full merged token count;
3. :func:`llava.compression.families.qwen2_5_vl.prepare_multimodal_inputs` shrinks each run to the tokens the
   image kept, left-pads the rows and builds the kept tokens' original M-RoPE positions from the full sequence;
   ``generate()`` receives them (``position_ids``) with the features (``mm_encoder_outputs``), so images of different
   sizes batch together and the tower never runs twice;
4. only the new tokens are decoded (``skip_special_tokens``, ``.strip()``).
"""

from __future__ import annotations

from typing import Any

import torch

from llava.compression.families import qwen2_5_vl as family
from llava.eval.inference import (
    GenerationSettings,
    SampleResult,
    build_generation_config,
    left_pad,
    sample_results,
)
from llava.model.qwen2_5_vl import END_OF_TEXT, IMAGE_TOKEN, build_prompt

CONV_MODE = "qwen2_5_vl"  # what answers record as their conversation mode


def suppressed_ids(tokenizer, config) -> list[int]:
    """Ids never to generate: the placeholders and the embedding rows beyond the tokenizer (Qwen pads its
    vocabulary); ``<|endoftext|>`` stays, it ends an answer as in Qwen's generation config."""
    vocab = config.text_config.vocab_size
    ids = set(range(len(tokenizer), vocab)) | {int(config.image_token_id), int(config.video_token_id)}
    return sorted(i for i in ids if i < vocab)


class QwenGenerator:
    """Generates answers for batches of (message, patches, grid) triples; the interface of ``LlavaGenerator``
    (``image_sizes[i]`` is image ``i``'s ``image_grid_thw`` row here)."""

    def __init__(self, tokenizer, model, save_kept_tokens: bool = False):
        self.tokenizer, self.model = tokenizer, model
        self.save_kept_tokens = save_kept_tokens
        self.suppress = suppressed_ids(tokenizer, model.config)
        self.merge = model.config.vision_config.spatial_merge_size ** 2

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def generation_config(self, settings: GenerationSettings):
        config = build_generation_config(settings, self.tokenizer, self.suppress)
        stops = [self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
        config.eos_token_id = sorted({int(i) for i in stops if i is not None})
        return config

    @torch.inference_mode()
    def generate(self, messages: list[str], pixel_values: list[torch.Tensor | None], settings: GenerationSettings,
                 image_sizes: list[Any] | None = None) -> list[SampleResult]:
        """Answers for one batch: ``pixel_values[i]`` ``[patches, C]`` with ``image_sizes[i]`` its ``(t, h, w)``
        grid, or ``None`` (text-only question)."""
        if len(messages) != len(pixel_values):
            raise ValueError("one pixel_values entry (or None) per message is required")
        with_image = [i for i, p in enumerate(pixel_values) if p is not None]
        if with_image and (image_sizes is None or any(image_sizes[i] is None for i in with_image)):
            raise ValueError("a Qwen2.5-VL model needs each image's image_grid_thw")
        grid = None
        encoded = None
        if with_image:
            dtype = self.model.model.visual.dtype
            patches = torch.cat([pixel_values[i] for i in with_image]).to(self.device, dtype)
            grid = torch.tensor([list(image_sizes[i]) for i in with_image], dtype=torch.long, device=self.device)
            encoded = self.model.model.get_image_features(patches, grid)
        rows, full_counts = [], iter(int(g.prod()) // self.merge for g in (grid if grid is not None else []))
        for i, message in enumerate(messages):
            prompt = build_prompt(message)
            n = prompt.count(IMAGE_TOKEN)
            if n != (1 if pixel_values[i] is not None else 0):
                raise ValueError(f"message {i} has {n} <image> placeholders but "
                                 f"{'an image' if pixel_values[i] is not None else 'no image'}")
            if n:
                prompt = prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * next(full_counts))
            rows.append(self.tokenizer(prompt, add_special_tokens=False).input_ids)
        input_ids, attention_mask = left_pad(rows, self.tokenizer.pad_token_id, self.device)
        prepared = family.prepare_multimodal_inputs(self.model, input_ids, attention_mask, None, grid,
                                                    pad_token_id=self.tokenizer.pad_token_id, image_features=encoded)
        output = family.generate_prepared(self.model, prepared, None,
                                          generation_config=self.generation_config(settings))
        traces: list[dict[str, Any]] = [{"visual_tokens": 0} for _ in messages]
        image_traces = prepared["compression_trace"] or [{} for _ in with_image]
        kept = prepared["mm_token_type_ids"].eq(1).sum(dim=1).tolist()
        for i, trace in zip(with_image, image_traces):
            traces[i] = {k: v for k, v in trace.items() if k != "row"}
            traces[i]["visual_tokens"] = int(kept[i])
        return sample_results(self.tokenizer, output, prepared["input_ids"].shape[1], traces,
                              self.save_kept_tokens)
