"""The one builder of LLaVA-shaped transformers configs from shape numbers (no checkpoint needed).

Used by the tiny checkpoints (:mod:`llava.model.tiny`, :mod:`videollava.model.tiny`), the benchmark geometries
(:mod:`llava.bench.geometries`, :mod:`llava.bench.llm_pruning`) and the tests' small models, so that a convention
(e.g. the projector's activation or which vision layer feeds it) is written once.

The defaults are LLaVA-1.5's as the llava-hf checkpoints have them: a CLIP tower with ``quick_gelu`` and
LayerNorm eps 1e-5, a Llama with RMSNorm eps 1e-5, ``<s>`` = 1, ``</s>`` = 2, untied embeddings, a 2-layer GELU
projector with bias, features from vision layer -2 without [CLS]. Callers pass only what differs.
"""

from __future__ import annotations

from typing import Any


def clip_vision_config(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    image_size: int,
    patch_size: int,
    hidden_act: str = "quick_gelu",
    projection_dim: int = 768,
):
    """A ``CLIPVisionConfig`` (OpenAI CLIP's ``quick_gelu`` unless ``hidden_act`` says otherwise, e.g. LanguageBind's
    exact ``gelu``). ``projection_dim`` only matters to CLIP's contrastive head, which LLaVA does not use."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
    )


def llama_text_config(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab_size: int,
    pad_token_id: int | None,
    init_range: float = 0.02,
    max_positions: int = 4096,
    rms_norm_eps: float = 1e-5,
):
    """A ``LlamaConfig`` (Vicuna's special ids: ``<s>`` = 1, ``</s>`` = 2; untied input / output embeddings)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        rms_norm_eps=rms_norm_eps,
        initializer_range=init_range,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )


def llava_config(vision: Any, text: Any, *, image_token_id: int, vision_feature_layer: int = -2):
    """A LLaVA-1.5 ``LlavaConfig`` joining a :func:`clip_vision_config` and a :func:`llama_text_config`: the
    mlp2x_gelu projector (with bias) on vision layer ``vision_feature_layer`` without [CLS], one placeholder per
    patch (``image_seq_length`` = the tower's patch count)."""
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        multimodal_projector_bias=True,
    )


LLAVA_NEXT_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # LLaVA-1.6's anyres grids


def llava_next_config(
    vision: Any,
    text: Any,
    *,
    image_token_id: int,
    image_grid_pinpoints: Any = LLAVA_NEXT_GRID_PINPOINTS,
    vision_feature_layer: int = -2,
):
    """A LLaVA-NeXT (LLaVA-1.6) ``LlavaNextConfig``: the same tower, projector and feature layer as
    :func:`llava_config`, plus the anyres grids (``image_grid_pinpoints``, ``(height, width)`` pairs in pixels)."""
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        multimodal_projector_bias=True,
        image_grid_pinpoints=[list(p) for p in image_grid_pinpoints],
    )
