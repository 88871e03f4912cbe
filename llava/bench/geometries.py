"""Named model geometries: the shapes the FLOPs formula and the latency harness need (no weights).

A :class:`BenchGeometry` holds the vision encoder, projector and language-model widths of a LLaVA-style model
and how many visual tokens one sample gives the LLM. Named geometries (``get_geometry(name)``):

============== ====================================================================================================
llava-1.5-7b   CLIP ViT-L/14-336 (24 layers, 1024 wide, 577 tokens), mlp2x_gelu, Vicuna-7B (32 x 4096, FFN 11008)
llava-1.5-13b  same vision, Vicuna-13B (40 x 5120, FFN 13824)
llava-next-7b  LLaVA-1.6-Vicuna-7B with AnyRes fixed at 672x672: 5 crops of 336 (base + 2x2) = 2880 visual tokens,
               the "spatial" layout without unpad / newline tokens (FasterVLM's fixed-2880 convention);
               :func:`next_geometry_for_image` gives LLaVA-1.6's real anyres count for one image size instead
               (base + grid crops, unpadded to the aspect ratio, one ``image_newline`` per row)
video-llava-7b LanguageBind video tower (CLIP ViT-L/14 at 224: 257 tokens per frame, 24 layers with temporal
               attention over the 8 frames), 8 frames x 256 = 2048 visual tokens, Vicuna-7B
qwen2.5-vl-7b  Qwen2.5-VL-7B: window-attention ViT (32 blocks, 1280 wide, SwiGLU, windows of 112 px, full attention
               in blocks 7/15/23/31, no [CLS]), 2x2 patch merger, Qwen2.5-7B (28 x 3584, FFN 18944, 4 KV heads);
               the token count is dynamic: the default is one 672x672 image (48x48 patches -> 24x24 = 576
               tokens), :func:`qwen_geometry_for_image` gives any image's count (``min_pixels`` / ``max_pixels``)
tiny           :data:`llava.model.tiny.TINY` (the random test checkpoints)
============== ====================================================================================================

``text_tokens`` defaults to 60, the LLM-Viewer convention the FiCoCo paper used for its TFLOPs (pass the real
prompt length to the FLOPs functions to count a real benchmark).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from llava.compression.registry import ModelGeometry

DEFAULT_TEXT_TOKENS = 60
CLIP_VISION, QWEN_VISION = "clip", "qwen2.5-vl"  # BenchGeometry.vision_arch


@dataclass(frozen=True)
class BenchGeometry:
    """Shapes of a LLaVA-style model for FLOPs / memory arithmetic and for building a random-weight copy.

    Vision: ``images_per_sample`` images (crops or frames) of ``image_size`` px cut into ``patch_size`` patches, each
    ``(image_size / patch_size)^2`` patches + 1 [CLS] through ``vision_layers`` pre-LN transformer layers
    (``vision_hidden`` wide, GELU MLP of ``vision_intermediate``); ``temporal_frames > 1`` adds LanguageBind's
    temporal attention sub-layer to every layer. Projector: ``projector_layers`` linear layers
    ``vision_hidden -> llm_hidden (-> llm_hidden)``. LLM: ``llm_layers`` Llama layers (SwiGLU FFN of
    ``llm_intermediate``, grouped-query attention with ``llm_kv_heads``), ``vocab_size`` for the LM head.
    """

    name: str
    image_size: int = 336
    patch_size: int = 14
    vision_hidden: int = 1024
    vision_intermediate: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    vision_feature_layer: int = -2
    images_per_sample: int = 1
    temporal_frames: int = 1
    projector_layers: int = 2
    llm_hidden: int = 4096
    llm_intermediate: int = 11008
    llm_layers: int = 32
    llm_heads: int = 32
    llm_kv_heads: int = 32
    vocab_size: int = 32000
    text_tokens: int = DEFAULT_TEXT_TOKENS
    description: str = ""
    # visual tokens the LLM receives per sample when they are not images x patches (LLaVA-NeXT anyres: unpadding and
    # image_newline tokens); None = images_per_sample * patches_per_image
    llm_visual_tokens: int | None = None
    # Qwen2.5-VL-style towers (vision_arch "qwen2.5-vl"): no [CLS], SwiGLU MLPs, attention inside windows of
    # window_size px except in full_attention_layers blocks, a merger of merge_size^2 patches (2-layer MLP to the LLM
    # width) after the tower, Conv3d patches of temporal_patch_size frames; merged_grid = one image's (rows, cols)
    # after the merger (dynamic resolution), which is what the LLM and the methods see
    vision_arch: str = CLIP_VISION
    merge_size: int = 1
    window_size: int = 0
    full_attention_layers: int = 0
    temporal_patch_size: int = 1
    merged_grid: tuple[int, int] | None = None

    # -- derived -------------------------------------------------------------------------------------------------

    @property
    def is_qwen(self) -> bool:
        return self.vision_arch == QWEN_VISION

    @property
    def grid(self) -> tuple[int, int]:
        """The grid of tokens one image gives the LLM (Qwen2.5-VL: after the merger)."""
        if self.merged_grid is not None:
            return (int(self.merged_grid[0]), int(self.merged_grid[1]))
        side = self.image_size // self.patch_size // self.merge_size
        return (side, side)

    @property
    def patches_per_image(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def vision_tokens(self) -> int:
        """Tokens per image inside the encoder ([CLS] + patches; Qwen2.5-VL: the patches before the merger)."""
        if self.is_qwen:
            return self.patches_per_image * self.merge_size**2
        return self.patches_per_image + 1

    @property
    def visual_tokens(self) -> int:
        """Visual tokens one sample gives the LLM without compression (576, 2880, 2048; LLaVA-NeXT anyres: its
        unpadded count with newline tokens, :func:`next_geometry_for_image`)."""
        if self.llm_visual_tokens is not None:
            return self.llm_visual_tokens
        return self.images_per_sample * self.patches_per_image

    @property
    def projected_tokens(self) -> int:
        """Tokens through the projector without compression: every crop's patches (before any unpadding)."""
        return self.images_per_sample * self.patches_per_image

    @property
    def llm_head_dim(self) -> int:
        return self.llm_hidden // self.llm_heads

    @property
    def llm_kv_width(self) -> int:
        """Width of one token's keys (= values) in one layer: ``kv_heads * head_dim``."""
        return self.llm_kv_heads * self.llm_head_dim

    @property
    def vision_head_dim(self) -> int:
        return self.vision_hidden // self.vision_heads

    @property
    def feature_layer(self) -> int:
        return self.compression_geometry().feature_layer

    def compression_geometry(self) -> ModelGeometry:
        """The registry's :class:`ModelGeometry` (per image) for validating method configs."""
        return ModelGeometry(
            num_patches=self.patches_per_image,
            grid=self.grid,
            vision_layers=self.vision_layers,
            llm_layers=self.llm_layers,
            vision_feature_layer=self.vision_feature_layer,
            has_cls=not self.is_qwen,
            family="qwen2.5-vl" if self.is_qwen else "",
        )

    def replace(self, **changes: Any) -> BenchGeometry:
        """A copy with some fields changed (e.g. ``llm_layers=2`` for a CPU latency run)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_config(self, attn_implementation: str = "sdpa"):
        """A transformers ``LlavaConfig`` of this shape (CLIP vision tower, Llama LLM; random weights when built).

        Video-LLaVA's temporal sub-layers and LLaVA-NeXT's AnyRes packing have no ``LlavaConfig`` equivalent: the
        latency harness feeds ``images_per_sample`` separate images instead, which gives the same token counts
        (the temporal attention is left out, see the latency output's notes).
        """
        if self.is_qwen:
            raise ValueError(f"{self.name}: the latency harness builds LLaVA-shaped models only (no Qwen2.5-VL yet)")
        from llava.model.configs import clip_vision_config, llama_text_config, llava_config
        from llava.model.original_layout import padded_vocab

        vision = clip_vision_config(
            hidden=self.vision_hidden,
            intermediate=self.vision_intermediate,
            layers=self.vision_layers,
            heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
        )
        # image id and pad id follow llava-hf: <image> = vocab, <pad> = vocab + 1, embeddings padded by 64
        text = llama_text_config(
            hidden=self.llm_hidden,
            intermediate=self.llm_intermediate,
            layers=self.llm_layers,
            heads=self.llm_heads,
            kv_heads=self.llm_kv_heads,
            vocab_size=padded_vocab(self.vocab_size),
            pad_token_id=self.vocab_size + 1,
            max_positions=max(4096, self.visual_tokens + 1024),
        )
        config = llava_config(
            vision, text, image_token_id=self.vocab_size, vision_feature_layer=self.vision_feature_layer
        )
        config._attn_implementation = attn_implementation
        config.text_config._attn_implementation = attn_implementation
        config.vision_config._attn_implementation = attn_implementation
        return config


def _tiny() -> BenchGeometry:
    from llava.model.tiny import TINY

    return BenchGeometry(
        name="tiny",
        image_size=TINY.image_size,
        patch_size=TINY.patch_size,
        vision_hidden=TINY.vision_hidden,
        vision_intermediate=TINY.vision_intermediate,
        vision_layers=TINY.vision_layers,
        vision_heads=TINY.vision_heads,
        llm_hidden=TINY.text_hidden,
        llm_intermediate=TINY.text_intermediate,
        llm_layers=TINY.text_layers,
        llm_heads=TINY.text_heads,
        llm_kv_heads=TINY.text_kv_heads,
        vocab_size=TINY.base_vocab,
        description="tiny random LLaVA-1.5-shaped test model (llava.model.tiny)",
    )


LLAVA_15_7B = BenchGeometry(
    name="llava-1.5-7b",
    description="LLaVA-1.5-7B: CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B, 576 visual tokens",
)
LLAVA_15_13B = BenchGeometry(
    name="llava-1.5-13b",
    llm_hidden=5120,
    llm_intermediate=13824,
    llm_layers=40,
    llm_heads=40,
    llm_kv_heads=40,
    description="LLaVA-1.5-13B: CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-13B, 576 visual tokens",
)
LLAVA_NEXT_7B = BenchGeometry(
    name="llava-next-7b",
    images_per_sample=5,
    description="LLaVA-NeXT-7B (1.6 Vicuna), AnyRes fixed at 672x672: 5 crops x 576 = 2880 visual tokens "
    "(no unpad, no newline tokens)",
)
VIDEO_LLAVA_7B = BenchGeometry(
    name="video-llava-7b",
    image_size=224,
    images_per_sample=8,
    temporal_frames=8,
    description="Video-LLaVA-7B: LanguageBind video tower (ViT-L/14 at 224, temporal attention), "
    "8 frames x 256 = 2048 visual tokens, Vicuna-7B",
)

QWEN_2_5_VL_7B = BenchGeometry(
    name="qwen2.5-vl-7b",
    image_size=672,
    patch_size=14,
    vision_hidden=1280,
    vision_intermediate=3420,
    vision_layers=32,
    vision_heads=16,
    vision_feature_layer=-1,
    projector_layers=2,
    llm_hidden=3584,
    llm_intermediate=18944,
    llm_layers=28,
    llm_heads=28,
    llm_kv_heads=4,
    vocab_size=152064,
    vision_arch=QWEN_VISION,
    merge_size=2,
    window_size=112,
    full_attention_layers=4,
    temporal_patch_size=2,
    merged_grid=(24, 24),
    description="Qwen2.5-VL-7B: window-attention ViT + 2x2 merger + Qwen2.5-7B; one 672x672 image = 576 merged "
    "tokens (dynamic: qwen_geometry_for_image)",
)


def qwen_geometry_for_image(
    image_size: tuple[int, int],
    base: BenchGeometry = QWEN_2_5_VL_7B,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> BenchGeometry:
    """``base`` (a Qwen2.5-VL geometry) for one image of ``image_size = (height, width)`` px, resized as Qwen's
    processor does (``smart_resize``: multiples of ``patch * merge`` px within ``[min_pixels, max_pixels]``)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    unit = base.patch_size * base.merge_size
    height, width = smart_resize(int(image_size[0]), int(image_size[1]), factor=unit, min_pixels=min_pixels,
                                 max_pixels=max_pixels)
    rows, cols = height // unit, width // unit
    return base.replace(
        name=f"{base.name}@{int(image_size[0])}x{int(image_size[1])}",
        merged_grid=(rows, cols),
        description=f"{base.name}, one {image_size[0]}x{image_size[1]} (HxW) image resized to {height}x{width}: "
        f"{rows}x{cols} = {rows * cols} merged tokens",
    )


# LLaVA-1.6's image_grid_pinpoints (the same set read as (height, width) or (width, height))
LLAVA_16_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def next_geometry_for_image(
    image_size: tuple[int, int],
    mode: str = "anyres",
    base: BenchGeometry = LLAVA_NEXT_7B,
    pinpoints=LLAVA_16_PINPOINTS,
) -> BenchGeometry:
    """``base`` (a LLaVA-NeXT geometry) for one image of ``image_size`` = ``(height, width)`` px.

    ``anyres`` (LLaVA-1.6 as released): the base image plus the crops of the grid chosen from ``pinpoints`` go
    through the encoder and projector; the LLM receives the base crop's patches plus the merged crop map cut back to
    the image's aspect ratio with one ``image_newline`` per row (:func:`llava.compression.families.anyres.
    image_token_count`; 2928 for a square 672 x 672 image, 2328 for 336 x 1008). ``fixed-672`` (FasterVLM): 5 crops,
    a constant 5 x 576 = 2880.
    """
    from llava.compression.families.anyres import crop_count, image_token_count

    size = (int(image_size[0]), int(image_size[1]))
    crops = crop_count(size, mode=mode, pinpoints=pinpoints, crop_size=base.image_size)
    tokens = image_token_count(size, mode=mode, pinpoints=pinpoints, crop_size=base.image_size,
                               patch_size=base.patch_size)
    return base.replace(
        name=f"{base.name}@{size[0]}x{size[1]}-{mode}",
        images_per_sample=crops,
        llm_visual_tokens=None if tokens == crops * base.patches_per_image else tokens,
        description=f"{base.name}, one {size[0]}x{size[1]} (HxW) image, {mode}: {crops} crops, {tokens} visual tokens",
    )


_NAMED: dict[str, BenchGeometry] = {
    g.name: g for g in (LLAVA_15_7B, LLAVA_15_13B, LLAVA_NEXT_7B, VIDEO_LLAVA_7B, QWEN_2_5_VL_7B)
}
_ALIASES = {
    "llava-v1.5-7b": "llava-1.5-7b",
    "llava-v1.5-13b": "llava-1.5-13b",
    "llava-1.5-7b-hf": "llava-1.5-7b",
    "llava-1.5-13b-hf": "llava-1.5-13b",
    "llava-v1.6-vicuna-7b": "llava-next-7b",
    "llava-v1.6-7b": "llava-next-7b",
    "llava-1.6-7b": "llava-next-7b",
    "llava-v1.6-vicuna-7b-hf": "llava-next-7b",
    "video-llava-7b-hf": "video-llava-7b",
    "videollava-7b": "video-llava-7b",
    "qwen2.5-vl-7b-instruct": "qwen2.5-vl-7b",
    "qwen2_5_vl_7b": "qwen2.5-vl-7b",
}


def available_geometries() -> list[str]:
    return sorted([*_NAMED, "tiny"])


def get_geometry(name: str) -> BenchGeometry:
    """A named geometry (case-insensitive; aliases such as ``llava-v1.5-7b`` accepted)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key == "tiny":
        return _tiny()
    if key not in _NAMED:
        raise KeyError(f"unknown model geometry {name!r}; choose one of: {', '.join(available_geometries())}")
    return _NAMED[key]


def geometry_for_checkpoint(checkpoint: str) -> BenchGeometry:
    """The geometry of a checkpoint given by name (``llava-v1.5-7b``, ``liuhaotian/llava-v1.5-13b``, a results
    file's ``checkpoint`` field) or by a local folder with a ``config.json`` (read, no weights loaded).

    Raises ``KeyError`` when the name is not recognised and no readable config exists.
    """
    if os.path.isfile(os.path.join(str(checkpoint), "config.json")):
        return geometry_from_config_file(str(checkpoint))
    base = os.path.basename(os.path.normpath(str(checkpoint))).lower()
    try:
        return get_geometry(base)
    except KeyError:
        pass
    size = re.search(r"(\d+)b\b", base)
    if re.search(r"qwen2[._]5[-_]?vl", base):  # before "tiny": a tiny Qwen is not the tiny LLaVA
        if "tiny" in base or (size is not None and size.group(1) != "7"):
            raise KeyError(f"no model geometry known for checkpoint {checkpoint!r} (give its folder)")
        return QWEN_2_5_VL_7B
    if "tiny" in base:
        return _tiny()
    if "video" in base:
        return VIDEO_LLAVA_7B
    if re.search(r"v?1[._]6|next", base) and (size is None or size.group(1) == "7"):
        return LLAVA_NEXT_7B
    if re.search(r"v?1[._]5", base) and size is not None and size.group(1) in ("7", "13"):
        return LLAVA_15_13B if size.group(1) == "13" else LLAVA_15_7B
    raise KeyError(f"no model geometry known for checkpoint {checkpoint!r}")


def geometry_from_config_file(model_path: str) -> BenchGeometry:
    """Read a checkpoint folder's config (llava-hf layout, or original layout with its CLIP folder)."""
    with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    from llava.model.builder import checkpoint_family

    if checkpoint_family(model_path) == "qwen2_5_vl":
        return geometry_from_qwen_config(cfg, name=os.path.basename(os.path.normpath(model_path)))
    if checkpoint_family(model_path) == "llava_next":  # the fixed-grid convention of llava-next-7b: base + 2 x 2
        geometry = _geometry_of_layout(model_path, cfg)
        return geometry.replace(images_per_sample=LLAVA_NEXT_7B.images_per_sample,
                                description=f"{geometry.name}: LLaVA-NeXT, fixed 672 grid (5 crops); "
                                "next_geometry_for_image counts one image's anyres tokens")
    return _geometry_of_layout(model_path, cfg)


def geometry_from_qwen_config(cfg: dict, name: str = "model") -> BenchGeometry:
    """A Qwen2.5-VL ``config.json`` (dict): its tower and decoder shapes, one 672x672 image by default."""
    vision, text = cfg.get("vision_config", {}), cfg.get("text_config", cfg)
    heads = text.get("num_attention_heads", 28)
    full = vision.get("fullatt_block_indexes", (7, 15, 23, 31))
    patch, merge = vision.get("patch_size", 14), vision.get("spatial_merge_size", 2)
    side = 672 // (patch * merge)
    return QWEN_2_5_VL_7B.replace(
        name=name,
        patch_size=patch,
        vision_hidden=vision.get("hidden_size", 1280),
        vision_intermediate=vision.get("intermediate_size", 3420),
        vision_layers=vision.get("depth", 32),
        vision_heads=vision.get("num_heads", 16),
        llm_hidden=text.get("hidden_size", 3584),
        llm_intermediate=text.get("intermediate_size", 18944),
        llm_layers=text.get("num_hidden_layers", 28),
        llm_heads=heads,
        llm_kv_heads=text.get("num_key_value_heads") or heads,
        vocab_size=text.get("vocab_size", 152064),
        merge_size=merge,
        window_size=vision.get("window_size", 112),
        full_attention_layers=len(full),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        merged_grid=(side, side),
        description=f"{name}: Qwen2.5-VL, one 672x672 image ({side}x{side} merged tokens)",
    )


def _geometry_of_layout(model_path: str, cfg: dict) -> BenchGeometry:
    """One crop's geometry from a checkpoint's ``config.json`` (either layout)."""
    if "vision_config" in cfg and "text_config" in cfg:
        return geometry_from_hf_config(cfg, name=os.path.basename(os.path.normpath(model_path)))
    from llava.model.original_layout import resolve_vision_tower

    tower = resolve_vision_tower(cfg, model_path, None)
    with open(os.path.join(tower, "config.json"), encoding="utf-8") as f:
        vcfg = json.load(f)
    vcfg = vcfg.get("vision_config", vcfg)
    return _from_parts(
        vcfg,
        cfg,
        name=os.path.basename(os.path.normpath(model_path)),
        feature_layer=cfg.get("mm_vision_select_layer", -2),
        projector=cfg.get("mm_projector_type", "mlp2x_gelu"),
    )


def geometry_from_hf_config(config: Any, name: str = "model") -> BenchGeometry:
    """From a ``LlavaConfig`` (object or dict) of the llava-hf layout."""
    cfg = config if isinstance(config, dict) else config.to_dict()
    return _from_parts(
        cfg["vision_config"], cfg["text_config"], name=name, feature_layer=cfg.get("vision_feature_layer", -2)
    )


def _from_parts(vision: dict, text: dict, name: str, feature_layer: Any, projector: str = "mlp2x_gelu"):
    if not isinstance(feature_layer, int):
        raise ValueError(f"vision_feature_layer={feature_layer!r}: only a single feature layer is supported")
    m = re.match(r"mlp(\d+)x", str(projector))
    heads = text.get("num_attention_heads", 32)
    return BenchGeometry(
        name=name,
        image_size=vision.get("image_size", 336),
        patch_size=vision.get("patch_size", 14),
        vision_hidden=vision.get("hidden_size", 1024),
        vision_intermediate=vision.get("intermediate_size", 4096),
        vision_layers=vision.get("num_hidden_layers", 24),
        vision_heads=vision.get("num_attention_heads", 16),
        vision_feature_layer=feature_layer,
        projector_layers=int(m.group(1)) if m else 1,
        llm_hidden=text.get("hidden_size", 4096),
        llm_intermediate=text.get("intermediate_size", 11008),
        llm_layers=text.get("num_hidden_layers", 32),
        llm_heads=heads,
        llm_kv_heads=text.get("num_key_value_heads") or heads,
        vocab_size=text.get("vocab_size", 32000),
    )
