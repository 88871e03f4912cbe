"""Qwen2.5-VL checkpoints: tiny random ones for tests, loading, the chat prompt and the image processor.

    python -m llava.model.tiny --family qwen2.5-vl --out DIR [--seed N]

The tiny model has Qwen2.5-VL's structure where it matters to token compression: a window-attention vision tower
(patch 14, temporal patch 2, windows of 112 px) with full-attention blocks (``fullatt_block_indexes``), the 2x2
patch merger after the tower, dynamic resolution (``image_grid_thw`` per image) and a Qwen2 decoder with M-RoPE
(``[3, B, T]`` positions from ``get_rope_index``). Widths are tiny and weights random. Its tokenizer is a byte-level
BPE trained offline on a few prompts (``tokenizers``) with Qwen's special tokens; the processor files
(``preprocessor_config.json`` with ``min_pixels`` / ``max_pixels``, ``chat_template.jinja``) are written beside
it, so ``Qwen2_5_VLProcessor.from_pretrained(DIR)`` works offline too.

Everything here runs transformers' own Qwen2.5-VL code (``Qwen2_5_VLForConditionalGeneration``,
``Qwen2VLImageProcessorPil``); nothing of the model is re-implemented.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.model.tiny import BENCHMARK_PROMPTS

MODEL_TYPE = "qwen2_5_vl"
FAMILY = "qwen2_5_vl"  # LoadedInfo.family / checkpoint_family value
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN)
DEFAULT_SYSTEM = "You are a helpful assistant."
# Qwen2.5-VL's processor defaults (pixels of the resized image): 4 to 16384 merged tokens per image
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 16384
# the research scripts' usual cap for evaluations (1280 merged tokens per image)
EVAL_MAX_PIXELS = 28 * 28 * 1280

# Qwen2.5-VL's chat format (one system turn, user turns with a vision block per image, the generation prompt)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyQwenGeometry:
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_size: int = 112  # 8 patches = 4 merged tokens per window side
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_depth: int = 4
    vision_heads: int = 2
    fullatt_block_indexes: tuple[int, ...] = (1, 3)
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # head_dim 16 -> 8 rotary frequencies
    base_vocab: int = 400
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 144  # at most 144 merged tokens per image (the test images give 20..64)


TINY_QWEN = TinyQwenGeometry()

_CORPUS = [*BENCHMARK_PROMPTS, "system user assistant " + DEFAULT_SYSTEM]


def build_tiny_tokenizer(vocab_size: int = TINY_QWEN.base_vocab):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained offline, with Qwen's special tokens after the base
    vocabulary, ``<|endoftext|>`` as pad, ``<|im_end|>`` as eos (Qwen2.5-VL-Instruct's), left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", model_max_length=32768,
                                   clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    fast.pad_token = END_OF_TEXT
    fast.eos_token = IM_END
    return fast


def build_tiny_config(tokenizer, g: TinyQwenGeometry = TINY_QWEN):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)
    vocab += -vocab % 64
    head_dim = g.text_hidden // g.text_heads
    if 2 * sum(g.mrope_section) != head_dim:
        raise ValueError(f"mrope_section {g.mrope_section} must cover head_dim / 2 = {head_dim // 2}")
    vision = {
        "depth": g.vision_depth, "hidden_size": g.vision_hidden, "intermediate_size": g.vision_intermediate,
        "num_heads": g.vision_heads, "patch_size": g.patch_size, "temporal_patch_size": g.temporal_patch_size,
        "spatial_merge_size": g.merge_size, "window_size": g.window_size, "out_hidden_size": g.text_hidden,
        "fullatt_block_indexes": list(g.fullatt_block_indexes), "hidden_act": "silu",
    }
    text = {
        "vocab_size": vocab, "hidden_size": g.text_hidden, "intermediate_size": g.text_intermediate,
        "num_hidden_layers": g.text_layers, "num_attention_heads": g.text_heads,
        "num_key_value_heads": g.text_kv_heads, "max_position_embeddings": 4096, "initializer_range": 0.3,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(g.mrope_section)},
        "tie_word_embeddings": False, "pad_token_id": ids[END_OF_TEXT],
        "bos_token_id": None, "eos_token_id": ids[IM_END],
    }
    return Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, image_token_id=ids[IMAGE_TOKEN], video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False, architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


def build_image_processor(min_pixels: int | None = None, max_pixels: int | None = None, folder: str | None = None):
    """Qwen2.5-VL's image processor (PIL backend: smart resize to multiples of 28 within ``[min_pixels,
    max_pixels]``, CLIP normalisation, flattened 2 x 14 x 14 patches). ``folder``: read its
    ``preprocessor_config.json`` first; explicit ``min_pixels`` / ``max_pixels`` override it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    saved: dict = {}
    path = None if folder is None else os.path.join(folder, "preprocessor_config.json")
    if path is not None and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
    size = dict(saved.get("size") or {})
    low = min_pixels if min_pixels is not None else saved.get("min_pixels", size.get("shortest_edge", DEFAULT_MIN_PIXELS))
    high = max_pixels if max_pixels is not None else saved.get("max_pixels", size.get("longest_edge", DEFAULT_MAX_PIXELS))
    if low > high:
        raise ValueError(f"--min-pixels {low} is larger than --max-pixels {high}")
    return Qwen2VLImageProcessorPil(
        min_pixels=int(low), max_pixels=int(high),
        patch_size=saved.get("patch_size", 14), temporal_patch_size=saved.get("temporal_patch_size", 2),
        merge_size=saved.get("merge_size", 2),
        image_mean=saved.get("image_mean", list(OPENAI_CLIP_MEAN)), image_std=saved.get("image_std", list(OPENAI_CLIP_STD)),
    )


def write_tiny_checkpoint(out: str, seed: int = 0, g: TinyQwenGeometry = TINY_QWEN) -> str:
    """Write a tiny random ``Qwen2_5_VLForConditionalGeneration`` with tokenizer and processor files to ``out``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    os.makedirs(out, exist_ok=True)
    tokenizer = build_tiny_tokenizer(g.base_vocab)
    config = build_tiny_config(tokenizer, g)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor = build_image_processor(g.min_pixels, g.max_pixels)
    processor.save_pretrained(out)
    with open(os.path.join(out, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    return out


def is_qwen2_5_vl_config(config: dict) -> bool:
    return config.get("model_type") == MODEL_TYPE


def build_prompt(message: str, system: str = DEFAULT_SYSTEM) -> str:
    """Qwen2.5-VL's chat prompt for one user turn. An ``<image>`` in ``message`` (the benchmarks' LLaVA-style
    placeholder, with the newline after it) becomes the vision block ``<|vision_start|><|image_pad|><|vision_end|>``
    at that place; the question text and its answer-format suffix are kept as they are."""
    text = message
    if "<image>" in text:
        text = text.replace("<image>\n", "<image>").replace("<image>", VISION_START + IMAGE_TOKEN + VISION_END)
    return f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{text}{IM_END}\n{IM_START}assistant\n"


def read_geometry(model_path: str, config: dict, max_pixels: int | None = None):
    """The family's :class:`~llava.compression.ModelGeometry` from ``config.json`` and the processor's
    ``max_pixels`` (``max_pixels`` given, else ``preprocessor_config.json``'s), before any weights load."""
    from llava.compression.families.qwen2_5_vl import nominal_geometry

    vision, text = config.get("vision_config", {}), config.get("text_config", config)
    if max_pixels is None:
        max_pixels = build_image_processor(folder=model_path).size["longest_edge"]
    return nominal_geometry(vision.get("patch_size", 14), vision.get("spatial_merge_size", 2),
                            vision.get("depth", 32), text.get("num_hidden_layers", 28), max_pixels)


def load_qwen2_5_vl(model_path: str, load_kwargs: dict, min_pixels: int | None = None,
                    max_pixels: int | None = None):
    """``(tokenizer, model, image_processor, context_len)`` of a Qwen2.5-VL folder (hub layout). The model
    instance records the processor's ``max_pixels`` (the compression family's geometry)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from llava.model.checkpoint import check_loading_info, one_line
    from llava.model.original_layout import CheckpointError, weight_files

    weight_files(model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as err:
        raise CheckpointError(f"cannot load the tokenizer in {model_path}: {one_line(err)}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = END_OF_TEXT
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, output_loading_info=True,
                                                                         **load_kwargs)
    except Exception as err:
        raise CheckpointError(f"cannot load the Qwen2.5-VL checkpoint in {model_path}: {one_line(err)}") from None
    check_loading_info(info, model_path)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != model.config.image_token_id:
        raise CheckpointError(
            f"the tokenizer in {model_path} maps {IMAGE_TOKEN} to id {image_id} but config.json says "
            f"image_token_id={model.config.image_token_id}; the tokenizer and the config do not belong together"
        )
    model.eval()
    processor = build_image_processor(min_pixels, max_pixels, folder=model_path)
    from llava.compression.families.qwen2_5_vl import set_max_pixels

    set_max_pixels(model, processor.size["longest_edge"])
    context_len = int(getattr(model.config.text_config, "max_position_embeddings", 32768))
    return tokenizer, model, processor, context_len
