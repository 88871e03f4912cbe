"""Load LLaVA-1.5 and LLaVA-NeXT (LLaVA-1.6) checkpoints of either layout into transformers' model classes.

LLaVA-1.5 -> ``LlavaForConditionalGeneration``; LLaVA-NeXT -> ``LlavaNextForConditionalGeneration`` (llava-hf
``llava-v1.6-*-hf`` or the original ``liuhaotian/llava-v1.6-*``, whose keys are converted in memory the same way).

    tokenizer, model, image_processor, context_len = load_pretrained_model("checkpoints/llava-v1.5-7b")

Both layouts give the same model class, the same tokenizer conventions (left padding, a pad token)
and the same image processor (LLaVA-1.5 pad-to-square preprocessing), so everything downstream is
layout-agnostic. See :mod:`llava.model.original_layout` for the key mapping of original checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from llava.mm_utils import build_image_processor, build_next_image_processor
from llava.model.checkpoint import check_loading_info, one_line
from llava.model.original_layout import (
    CheckpointError,
    build_llava_config,
    build_llava_next_config,
    check_state_shapes,
    convert_state_dict,
    detect_checkpoint,
    detect_layout,
    read_config,
    read_weights,
    resolve_vision_tower,
    weight_files,
)
from llava.model.qwen2_5_vl import FAMILY as QWEN_FAMILY
from llava.model.qwen2_5_vl import is_qwen2_5_vl_config, load_qwen2_5_vl
from llava.model.qwen2_5_vl import read_geometry as read_qwen_geometry
from llava.model.sentencepiece_tokenizer import has_sentencepiece_only


@dataclass(frozen=True)
class LoadedInfo:
    """How a checkpoint was loaded (kept on ``model.llava_load_info``)."""

    layout: str
    model_path: str
    vision_tower: str | None
    image_aspect_ratio: str
    family: str = "llava"  # "llava" (LLaVA-1.5), "llava_next" (LLaVA-1.6) or "qwen2_5_vl"
    next_grid: str | None = None  # LLaVA-NeXT only: "anyres" or "fixed-672"


def get_model_name_from_path(model_path: str) -> str:
    """LLaVA's model id: the folder name, or ``parent_checkpoint-N`` for trainer checkpoints."""
    parts = os.path.normpath(model_path).strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available (use --device cpu)")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: fp16 on GPU (as the original evaluation), fp32 on CPU."""
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str = "sdpa",
    vision_tower: str | None = None,
    device_map: str | dict | None = None,
    next_grid: str = "anyres",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """Load a LLaVA-1.5 or LLaVA-NeXT checkpoint of either layout, or a Qwen2.5-VL checkpoint (hub layout).

    Args:
        model_path: a local folder in the llava-hf layout or the original LLaVA layout.
        model_base: for original-layout checkpoints that store only part of the weights (e.g. a projector),
            the folder of the full base model whose weights the checkpoint's own weights update.
        model_name: unused; accepted for compatibility with the research repos' signature.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (fp16 on GPU, fp32 on CPU), ``"float16"``, ``"bfloat16"``, ``"float32"`` or a dtype.
        attn_implementation: ``"sdpa"`` (default), ``"flash_attention_2"`` or ``"eager"``. Compression
            methods never need eager attention.
        vision_tower: local CLIP folder overriding the original layout's ``mm_vision_tower``.
        device_map: passed to transformers instead of ``device`` (e.g. ``"auto"`` to shard a 13B model).
        next_grid: LLaVA-NeXT only. ``"anyres"`` (default): LLaVA-1.6 as released (grid from
            ``image_grid_pinpoints``, unpadding, ``image_newline`` tokens). ``"fixed-672"``: FasterVLM's setting for
            its NeXT numbers (grid fixed at 2 x 2 crops, ``spatial`` merge without unpadding or newlines: a constant
            5 x 576 = 2880 tokens); the model and the image processor both use it.
        min_pixels, max_pixels: Qwen2.5-VL only: the image processor's pixel range (dynamic resolution; default:
            the checkpoint's ``preprocessor_config.json``). The image processor returned is Qwen's
            (``pixel_values`` of flattened patches plus ``image_grid_thw``).

    Returns:
        ``(tokenizer, model, image_processor, context_len)``. The tokenizer pads on the left and has a pad
        token; ``model`` is in eval mode with ``model.llava_load_info`` describing what was loaded.

    Raises:
        CheckpointError: a folder that is neither layout, a missing vision tower, weight or tokenizer file, an
            empty, truncated or damaged weight or tokenizer file, or a weight whose shape does not match the config
            (one line naming the file and the problem).
    """
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from llava.compression.families.anyres import check_grid_mode

    config = read_config(model_path)
    check_grid_mode(next_grid)
    if is_qwen2_5_vl_config(config):
        return _load_qwen(model_path, config, device, dtype, attn_implementation, device_map, next_grid,
                          min_pixels, max_pixels)
    if min_pixels is not None or max_pixels is not None:
        raise CheckpointError(f"--min-pixels / --max-pixels apply to Qwen2.5-VL checkpoints only; {model_path} is not one")
    family, layout = detect_checkpoint(config, model_path)
    if family != "llava_next" and next_grid != "anyres":
        raise CheckpointError(f"--next-grid {next_grid} applies to LLaVA-NeXT checkpoints only; {model_path} is LLaVA-1.5")
    model_class = LlavaNextForConditionalGeneration if family == "llava_next" else LlavaForConditionalGeneration
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    load_kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation,
                   "device_map": device_map if device_map is not None else {"": device}}
    if os.path.isfile(os.path.join(model_path, "adapter_config.json")):
        raise CheckpointError(
            f"{model_path} holds a LoRA adapter (adapter_config.json); merge it into its base model first "
            "(the research repos' merge_lora_weights script) and load the merged folder"
        )

    tokenizer = load_tokenizer(model_path, model_base)  # before the weights: a missing file fails fast
    if layout == "hf":
        if model_base is not None:
            raise CheckpointError("--model-base is only used with original-layout checkpoints that store part of the weights")
        tower_path = None
        aspect = "anyres" if family == "llava_next" else "pad"
        weight_files(model_path)  # a missing, empty, truncated or damaged weight file is named before loading
        try:
            model, info = model_class.from_pretrained(
                model_path, output_loading_info=True, **load_kwargs
            )
        except Exception as err:  # e.g. SafetensorError: one line naming the folder, never a traceback
            raise CheckpointError(f"cannot load the llava-hf checkpoint in {model_path}: {one_line(err)}") from None
        check_loading_info(info, model_path)
        image_size = model.config.vision_config.image_size
        processor_cfg = _read_json(os.path.join(model_path, "preprocessor_config.json"))
    else:
        tower_path = resolve_vision_tower(config, model_path, vision_tower)
        llava_config = (build_llava_next_config if family == "llava_next" else build_llava_config)(config, tower_path)
        llm_state = read_weights(model_base) if model_base else {}
        llm_state.update(read_weights(model_path))
        has_tower = any(k.startswith("model.vision_tower.vision_tower.") for k in llm_state)
        vision_state = None if has_tower else read_weights(tower_path)
        state = convert_state_dict(llm_state, vision_state, int(config["vocab_size"]))
        with torch.device("meta"):
            reference = model_class(llava_config)
        check_state_shapes(state, reference, model_path, {"model.vision_tower.": tower_path})
        model, info = model_class.from_pretrained(
            None, config=llava_config, state_dict=state, output_loading_info=True, **load_kwargs
        )
        check_loading_info(info, model_path)
        aspect = config.get("image_aspect_ratio", "square")
        image_size = llava_config.vision_config.image_size
        processor_cfg = _read_json(os.path.join(tower_path, "preprocessor_config.json"))

    model.eval()
    model.llava_load_info = LoadedInfo(layout, model_path, tower_path, aspect, family,
                                       next_grid if family == "llava_next" else None)
    _check_special_tokens(tokenizer, model.config, model_path)
    image_mean = processor_cfg.get("image_mean") or (0.48145466, 0.4578275, 0.40821073)
    image_std = processor_cfg.get("image_std") or (0.26862954, 0.26130258, 0.27577711)
    if family == "llava_next":
        from llava.compression.families.llava_next import set_grid_mode

        set_grid_mode(model, next_grid)
        image_processor = build_next_image_processor(image_size, model.config.image_grid_pinpoints, image_mean, image_std)
    else:
        image_processor = build_image_processor(
            image_size=image_size, image_mean=image_mean, image_std=image_std, do_pad=(aspect == "pad")
        )
    context_len = int(getattr(model.config.text_config, "max_position_embeddings", 2048))
    return tokenizer, model, image_processor, context_len


def _load_qwen(model_path, config, device, dtype, attn_implementation, device_map, next_grid, min_pixels, max_pixels):
    """A Qwen2.5-VL checkpoint (:mod:`llava.model.qwen2_5_vl`)."""
    if next_grid != "anyres":
        raise CheckpointError(f"--next-grid {next_grid} applies to LLaVA-NeXT checkpoints only; {model_path} is Qwen2.5-VL")
    device = resolve_device(device)
    load_kwargs = {"dtype": resolve_dtype(dtype, device), "attn_implementation": attn_implementation,
                   "device_map": device_map if device_map is not None else {"": device}}
    tokenizer, model, processor, context_len = load_qwen2_5_vl(model_path, load_kwargs, min_pixels, max_pixels)
    model.llava_load_info = LoadedInfo("hf", model_path, None, "dynamic", QWEN_FAMILY)
    return tokenizer, model, processor, context_len


def _read_json(path: str) -> dict:
    import json

    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def load_tokenizer(model_path: str, model_base: str | None = None):
    """The checkpoint's tokenizer (or the base model's), padding on the left, with a pad token (unk if none).

    ``tokenizer.json`` (llava-hf layout): transformers' fast tokenizer, as the hub ships it. ``tokenizer.model``
    only (original LLaVA / Video-LLaVA layout): LLaMA's SentencePiece tokenizer with the checkpoint's ``legacy``
    handling, exactly as the original code's slow ``LlamaTokenizer`` (see :mod:`llava.model.sentencepiece_tokenizer`).
    """
    folders = [model_path] + ([model_base] if model_base else [])
    folder = next((f for f in folders if any(os.path.isfile(os.path.join(f, name)) for name in TOKENIZER_FILES)), None)
    if folder is None:
        projector_only = model_base is None and os.path.isfile(os.path.join(model_path, "mm_projector.bin"))
        raise CheckpointError(
            f"no tokenizer file in {' or '.join(folders)}: {os.path.join(model_path, 'tokenizer.json')} (llava-hf "
            "layout) or tokenizer.model (original layout) is missing; "
            + ("this projector-only checkpoint needs --model-base, the full model it was trained on" if projector_only
               else "copy the tokenizer files of the checkpoint's release into the folder")
        )
    if has_sentencepiece_only(folder):
        tok = load_sentencepiece_tokenizer(folder)
    else:
        tok = _load_fast_tokenizer(folder)
    if tok.bos_token_id is None:
        raise CheckpointError(f"the tokenizer in {folder} has no BOS token; LLaVA-1.5 prompts start with <s>")
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token  # LLaVA's convention for LLaMA tokenizers
    tok.padding_side = "left"
    return tok


def _load_fast_tokenizer(folder: str):
    from transformers import AutoTokenizer, LlamaConfig

    path = os.path.join(folder, "tokenizer.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        _read_json(os.path.join(folder, name))  # a damaged file is named
    try:
        # an explicit config keeps AutoTokenizer from parsing an original-layout config.json
        return AutoTokenizer.from_pretrained(folder, use_fast=True, config=LlamaConfig())
    except Exception as err:  # a damaged tokenizer.json / tokenizer_config.json: name it, never a traceback
        raise CheckpointError(
            f"cannot read the tokenizer in {folder} ({path}): {one_line(err)}; the file is damaged or incomplete, "
            "copy it again from the checkpoint's release"
        ) from None


def load_sentencepiece_tokenizer(folder: str):
    """:class:`~llava.model.sentencepiece_tokenizer.LlamaSentencePieceTokenizer` of ``folder/tokenizer.model`` with
    the settings of ``tokenizer_config.json`` (``legacy`` absent means ``True``, as transformers 4.x read it)."""
    from llava.model.sentencepiece_tokenizer import LlamaSentencePieceTokenizer

    settings = _read_json(os.path.join(folder, "tokenizer_config.json"))
    special = {name: _token_text(settings[name]) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
               if settings.get(name) is not None}
    path = os.path.join(folder, "tokenizer.model")
    try:
        tok = LlamaSentencePieceTokenizer(
            vocab_file=path,
            legacy=settings.get("legacy") is not False,
            add_bos_token=bool(settings.get("add_bos_token", True)),
            add_eos_token=bool(settings.get("add_eos_token", False)),
            clean_up_tokenization_spaces=bool(settings.get("clean_up_tokenization_spaces", False)),
            **special,
        )
    except Exception as err:  # sentencepiece reports a damaged model file as RuntimeError / OSError
        raise CheckpointError(
            f"cannot read the SentencePiece tokenizer {path}: {one_line(err)}; the file is damaged or incomplete, "
            "copy it again from the checkpoint's release"
        ) from None
    if settings.get("model_max_length"):
        tok.model_max_length = int(settings["model_max_length"])
    return tok


def _token_text(value) -> str:
    """A special token of ``tokenizer_config.json``: a string or a serialized ``AddedToken``."""
    return value["content"] if isinstance(value, dict) else str(value)


def _check_special_tokens(tokenizer, config, model_path: str) -> None:
    image_id = config.image_token_id
    vocab_image_id = tokenizer.convert_tokens_to_ids("<image>") if "<image>" in tokenizer.get_vocab() else None
    if vocab_image_id is not None and vocab_image_id != image_id:
        raise CheckpointError(
            f"the tokenizer in {model_path} maps <image> to id {vocab_image_id} but config.json says "
            f"image_token_id={image_id}; the tokenizer and the config do not belong together"
        )
    if tokenizer.pad_token_id == image_id:
        raise CheckpointError(
            f"the tokenizer in {model_path} pads with the image token id {image_id}; set a distinct pad token"
        )


def checkpoint_family(model_path: str) -> str:
    """``"llava"`` (LLaVA-1.5), ``"llava_next"`` (LLaVA-NeXT) or ``"qwen2_5_vl"``, read from ``config.json`` only."""
    config = read_config(model_path)
    if is_qwen2_5_vl_config(config):
        return QWEN_FAMILY
    return detect_checkpoint(config, model_path)[0]


def read_model_geometry(model_path: str, vision_tower: str | None = None, max_pixels: int | None = None):
    """The :class:`~llava.compression.ModelGeometry` of a checkpoint, read from its config files only, so
    that method arguments are validated before any weights load (Qwen2.5-VL: the largest image of
    ``max_pixels``, no [CLS], so a [CLS] method is refused here already)."""
    from transformers import CLIPVisionConfig

    from llava.compression.registry import ModelGeometry

    config = read_config(model_path)
    if is_qwen2_5_vl_config(config):
        return read_qwen_geometry(model_path, config, max_pixels)
    if detect_layout(config, model_path) == "hf":
        vision, text = config["vision_config"], config["text_config"]
        image_size, patch = vision.get("image_size", 336), vision.get("patch_size", 14)
        vision_layers, llm_layers = vision.get("num_hidden_layers", 24), text.get("num_hidden_layers", 32)
        feature_layer = config.get("vision_feature_layer", -2)
    else:
        vision = CLIPVisionConfig.from_pretrained(resolve_vision_tower(config, model_path, vision_tower))
        image_size, patch, vision_layers = vision.image_size, vision.patch_size, vision.num_hidden_layers
        llm_layers = config.get("num_hidden_layers", 32)
        feature_layer = config.get("mm_vision_select_layer", -2)
    side = image_size // patch
    return ModelGeometry(
        num_patches=side * side,
        grid=(side, side),
        vision_layers=vision_layers,
        llm_layers=llm_layers,
        vision_feature_layer=feature_layer,
    )
