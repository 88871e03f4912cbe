"""Original LLaVA checkpoints (``liuhaotian/llava-v1.5-*``) -> transformers' ``LlavaForConditionalGeneration``.

The mapping (platform.md Q6), applied in memory at load time:

==========================================================  ==========================================
original                                                    transformers 5.23 module layout
==========================================================  ==========================================
``model.embed_tokens / model.layers.N / model.norm``          ``model.language_model.*``
``lm_head.weight``                                           ``lm_head.weight``
``model.mm_projector.0.*`` / ``model.mm_projector.2.*``       ``model.multi_modal_projector.linear_1/2.*``
CLIP ``vision_model.*`` (separate folder) or                 ``model.vision_tower.*``
``model.vision_tower.vision_tower.vision_model.*``
``*.rotary_emb.inv_freq``, CLIP ``text_model.*``,            dropped
``logit_scale``, ``*_projection``, ``*.position_ids``
==========================================================  ==========================================

The embedding and ``lm_head`` rows grow from the original vocabulary V to llava-hf's size
(V + ``<image>`` + ``<pad>``, rounded up to a multiple of 64) with zero rows: ``<image>`` rows are
overwritten by image features and the generation code suppresses every added id, so their values
never matter.
"""

from __future__ import annotations

import os

import torch

from llava.model.checkpoint import (  # noqa: F401  (re-exported: the names callers import from here)
    ORIGINAL_ARCHITECTURES,
    CheckpointError,
    check_state_shapes,
    check_weight_file,
    checkpoint_kind,
    pad_embedding_rows,
    read_config,
    read_weights,
    rename_original_llm_key,
    weight_files,
)

LLAMA_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "hidden_act",
    "initializer_range",
    "attention_bias",
    "mlp_bias",
    "head_dim",
)


def detect_checkpoint(config: dict, model_path: str = "") -> tuple[str, str]:
    """``(family, layout)`` of an image-LLaVA checkpoint: family ``"llava"`` (LLaVA-1.5) or ``"llava_next"``
    (LLaVA-NeXT / LLaVA-1.6), layout ``"hf"`` or ``"original"``; a Video-LLaVA or unknown config is refused."""
    kind = checkpoint_kind(config)
    if kind is not None and kind[0] in ("llava", "llava_next"):
        return kind
    if kind is not None:
        raise CheckpointError(
            f"{os.path.join(model_path, 'config.json')} is a Video-LLaVA checkpoint ({kind[1]} layout), not an image "
            "LLaVA: load it with videollava.model.builder.load_pretrained_model"
        )
    raise CheckpointError(
        f"{os.path.join(model_path, 'config.json')} is neither a llava-hf checkpoint (expected 'vision_config' "
        "and 'text_config', model_type 'llava' or 'llava_next') nor an original LLaVA checkpoint (expected "
        f"'mm_vision_tower', architectures ['LlavaLlamaForCausalLM']); found model_type={config.get('model_type')!r}, "
        f"architectures={config.get('architectures')!r}"
    )


def detect_layout(config: dict, model_path: str = "") -> str:
    """``"hf"`` (llava-hf / transformers config) or ``"original"`` (``mm_vision_tower`` config), LLaVA-1.5 or NeXT."""
    return detect_checkpoint(config, model_path)[1]


def resolve_vision_tower(config: dict, model_path: str, override: str | None = None) -> str:
    """The local folder of the CLIP tower named by ``mm_vision_tower`` (or ``override``).

    Looked up, in order: the override; the name as a path (absolute, relative to the working directory,
    relative to the model folder); ``checkpoints/<last name component>``; the Hugging Face cache (offline).
    """
    name = override or config.get("mm_vision_tower") or config.get("vision_tower")
    if not name:
        raise CheckpointError(f"{os.path.join(model_path, 'config.json')} has no 'mm_vision_tower' field")
    candidates = [name, os.path.join(model_path, name), os.path.join("checkpoints", os.path.basename(name.rstrip("/")))]
    for cand in candidates:
        if os.path.isfile(os.path.join(cand, "config.json")):
            return cand
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return os.path.dirname(cached)
    except Exception:  # not a repo id, or no cache: fall through to the error
        pass
    where = "--vision-tower" if override else f"'mm_vision_tower' in {os.path.join(model_path, 'config.json')}"
    raise CheckpointError(
        f"vision tower {name!r} ({where}) not found locally; looked in {candidates} and the Hugging Face cache. "
        f"Download it (e.g. openai/clip-vit-large-patch14-336) to checkpoints/{os.path.basename(name.rstrip('/'))} "
        "or pass --vision-tower PATH"
    )


def padded_vocab(base_vocab: int) -> int:
    """llava-hf's embedding size: base vocabulary + <image> + <pad>, rounded up to a multiple of 64."""
    return ((base_vocab + 2 + 63) // 64) * 64


def build_llava_config(config: dict, vision_tower_path: str):
    """A transformers ``LlavaConfig`` equivalent to an original LLaVA ``config.json``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(
            f"mm_projector_type {projector!r} is not supported (LLaVA-1.5 uses 'mlp2x_gelu', which maps onto "
            "transformers' LlavaMultiModalProjector)"
        )
    vision_config = CLIPVisionConfig.from_pretrained(vision_tower_path)
    if config.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise CheckpointError(
            f"mm_hidden_size={config['mm_hidden_size']} in the model config does not match the vision tower at "
            f"{vision_tower_path} (hidden_size={vision_config.hidden_size})"
        )
    base_vocab = int(config["vocab_size"])
    text_kwargs = {k: config[k] for k in LLAMA_FIELDS if config.get(k) is not None}
    text_config = LlamaConfig(
        **text_kwargs,
        vocab_size=padded_vocab(base_vocab),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=base_vocab + 1,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise CheckpointError(f"mm_vision_select_feature {feature!r} is not supported (expected 'patch' or 'cls_patch')")
    llava = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=base_vocab,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if feature == "patch" else "full",
        multimodal_projector_bias=True,
    )
    llava.architectures = ["LlavaForConditionalGeneration"]
    return llava


def convert_state_dict(
    llm_state: dict[str, torch.Tensor], vision_state: dict[str, torch.Tensor] | None, base_vocab: int
) -> dict[str, torch.Tensor]:
    """Original LLaVA keys (+ CLIP keys) -> transformers 5.23 module-layout keys; see the module docstring."""
    out: dict[str, torch.Tensor] = {}
    tower_prefix = "model.vision_tower.vision_tower.vision_model."
    for key, value in llm_state.items():
        if key.startswith(tower_prefix):
            if not key.endswith("position_ids"):
                out["model.vision_tower." + key[len(tower_prefix) :]] = value
        elif (renamed := rename_original_llm_key(key)) is not None:
            out[renamed] = value
    if vision_state is not None:
        for key, value in vision_state.items():
            if key.startswith("vision_model.") and not key.endswith("position_ids"):
                out["model.vision_tower." + key[len("vision_model.") :]] = value
    pad_embedding_rows(out, padded_vocab(base_vocab))
    return out




def build_llava_next_config(config: dict, vision_tower_path: str):
    """A transformers ``LlavaNextConfig`` equivalent to an original LLaVA-1.6 ``config.json``
    (``image_aspect_ratio = anyres``, ``mm_patch_merge_type = spatial_unpad``, ``image_grid_pinpoints``).

    The original code reads each pinpoint as ``(width, height)``, transformers as ``(height, width)``: the pairs are
    swapped here (order kept), so grid selection, including its first-wins tie-breaking, is the original's.
    """
    from transformers import LlavaNextConfig

    from llava.model.configs import LLAVA_NEXT_GRID_PINPOINTS

    architectures = config.get("architectures") or list(ORIGINAL_ARCHITECTURES)
    if not set(architectures) <= set(ORIGINAL_ARCHITECTURES):
        raise CheckpointError(
            f"original LLaVA-NeXT checkpoints with architectures {architectures} are not supported (only "
            f"{list(ORIGINAL_ARCHITECTURES)}, the Vicuna ones); use the llava-hf port, e.g. "
            "llava-hf/llava-v1.6-mistral-7b-hf"
        )
    aspect = config.get("image_aspect_ratio", "anyres")
    merge = config.get("mm_patch_merge_type", "spatial_unpad")
    if aspect != "anyres" or merge != "spatial_unpad":
        raise CheckpointError(
            f"LLaVA-NeXT config with image_aspect_ratio={aspect!r}, mm_patch_merge_type={merge!r} is not supported "
            "(LLaVA-1.6 uses 'anyres' with 'spatial_unpad'; FasterVLM's 'spatial' 672x672 setting is the loader's "
            "next_grid='fixed-672' option on a standard checkpoint)"
        )
    pinpoints = config.get("image_grid_pinpoints") or [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS]
    if isinstance(pinpoints, str) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in pinpoints):
        raise CheckpointError(
            f"image_grid_pinpoints={pinpoints!r} in the LLaVA-NeXT config is not a list of [width, height] pairs "
            f"(LLaVA-1.6 ships [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])"
        )
    llava = build_llava_config(config, vision_tower_path).to_dict()
    for name in ("model_type", "architectures", "transformers_version", "image_token_id"):
        llava.pop(name, None)
    next_config = LlavaNextConfig(
        **{k: v for k, v in llava.items() if k in ("vision_config", "text_config", "image_seq_length",
                                                   "projector_hidden_act", "vision_feature_layer",
                                                   "vision_feature_select_strategy", "multimodal_projector_bias")},
        image_token_index=int(config["vocab_size"]),
        image_grid_pinpoints=[[int(h), int(w)] for w, h in pinpoints],
    )
    next_config.architectures = ["LlavaNextForConditionalGeneration"]
    return next_config
