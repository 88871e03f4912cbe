"""The LLaVA-NeXT (LLaVA-1.6) family: ``LlavaNextForConditionalGeneration``, loading and geometry only so far.

What works now: the family is registered (``python -m llava.compression.families`` lists it), it says what one
visual unit is (one crop's 24x24 CLIP grid with [CLS]) and which units an image becomes
(:meth:`LlavaNextFamily.unit_geometries`: the base image plus its anyres crops), and it owns the grid mode of a
model instance (:func:`set_grid_mode`): LLaVA-1.6's own ``anyres`` packing, or FasterVLM's ``fixed-672`` setting
(grid fixed at 2 x 2 crops, ``spatial`` merge without unpadding or ``image_newline``: 5 x 576 = 2880 tokens).

What does not yet: no compression stage is integrated, so every method is refused with a message saying so
(``stages`` is empty); ``"none"`` applies.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration

from llava.compression.families import register_family
from llava.compression.families.anyres import (
    ANYRES,
    FIXED_672,
    check_grid_mode,
    crop_grid,
    grid_pinpoints_for,
)
from llava.compression.families.contract import Family
from llava.compression.registry import CompressionConfigError, MethodConfig, ModelGeometry, NoCompression

FAMILY_NAME = "llava-next"
GRID_ATTR = "_llava_next_grid"  # on the LlavaNextModel instance: (mode, the checkpoint's own pinpoints)


def supports(model: Any) -> bool:
    return isinstance(model, LlavaNextForConditionalGeneration)


def model_geometry(model: Any) -> ModelGeometry:
    """One crop: the tower's patch grid with [CLS] (``default`` feature strategy drops it before the projector)."""
    cfg = model.config
    vc = cfg.vision_config
    side = vc.image_size // vc.patch_size
    if not isinstance(cfg.vision_feature_layer, int):
        raise CompressionConfigError(f"vision_feature_layer={cfg.vision_feature_layer!r}: only a single feature layer is supported")
    return ModelGeometry(
        num_patches=side * side,
        grid=(side, side),
        vision_layers=vc.num_hidden_layers,
        llm_layers=cfg.text_config.num_hidden_layers,
        vision_feature_layer=cfg.vision_feature_layer,
        has_cls=True,
        family=FAMILY_NAME,
    )


# -- grid mode -------------------------------------------------------------------------------------------------------


def grid_mode(model: Any) -> str:
    """``"anyres"`` (LLaVA-1.6's default) or ``"fixed-672"`` (FasterVLM's setting) for this model instance."""
    saved = model.model.__dict__.get(GRID_ATTR)
    return ANYRES if saved is None else saved[0]


def set_grid_mode(model: Any, mode: str) -> Any:
    """Set how this model instance tiles and packs images; returns ``model``.

    ``fixed-672``: ``config.image_grid_pinpoints`` becomes the one 2 x 2 grid (``[[2s, 2s]]`` for crop size ``s``,
    672 on a 336 tower; the image processor must use the same, see :func:`llava.mm_utils.build_next_image_processor`)
    and the instance's ``pack_image_features`` merges the crops row-major without unpadding or newline tokens
    (LLaVA-1.6's ``mm_patch_merge_type = spatial``). ``anyres`` restores the checkpoint's pinpoints and packing.
    Nothing is changed at class level.
    """
    check_grid_mode(mode)
    base = model.model
    saved = base.__dict__.pop(GRID_ATTR, None)
    base.__dict__.pop("pack_image_features", None)
    if saved is not None:
        model.config.image_grid_pinpoints = saved[1]
    if mode == FIXED_672:
        original = [list(p) for p in model.config.image_grid_pinpoints]
        model.config.image_grid_pinpoints = grid_pinpoints_for(mode, original, model.config.vision_config.image_size)
        base.__dict__[GRID_ATTR] = (mode, original)
        base.pack_image_features = types.MethodType(_pack_spatial, base)
    return model


def _pack_spatial(self: Any, image_features, image_sizes, vision_feature_select_strategy=None, image_newline=None):
    """LLaVA-1.6's ``spatial`` merge: base crop, then the grid crops' features as one row-major map, no unpadding and
    no ``image_newline`` (``image_newline`` is accepted for the signature and ignored)."""
    crop = self.config.vision_config.image_size
    side = crop // self.config.vision_config.patch_size
    packed = []
    for features, size in zip(image_features, image_sizes):
        base_crop, crops = features[0], features[1:]
        if crops.shape[0] == 0:
            packed.append(base_crop)
            continue
        rows, cols = crop_grid(tuple(int(s) for s in size), self.config.image_grid_pinpoints, crop)
        grid = crops.view(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4).reshape(rows * side * cols * side, -1)
        packed.append(torch.cat((base_crop, grid), dim=0))
    lengths = torch.tensor([p.shape[0] for p in packed], dtype=torch.long, device=image_features[0].device)
    return packed, lengths


# -- the family ------------------------------------------------------------------------------------------------------


class LlavaNextFamily(Family):
    """LLaVA-NeXT / LLaVA-1.6: an image = a base crop plus anyres grid crops, each a 24x24 CLIP grid with [CLS]."""

    name = FAMILY_NAME
    stages = ()  # no compression stage integrated yet: every method is refused with that reason
    provides = frozenset({"cls"})

    def supports(self, model: Any) -> bool:
        return supports(model)

    def refusal(self, spec: Any) -> str | None:
        if not spec.stages:
            return None
        return (
            f"method {spec.name!r} is not integrated with the model family {self.name!r} yet (LLaVA-NeXT loads and "
            "runs unmodified; compression methods on it are a later step)"
        )

    def geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)

    def unit_geometries(self, model: Any, image_sizes: Any = None, **inputs: Any) -> list[ModelGeometry]:
        """One crop geometry per crop the tower encodes for ``image_sizes`` (``(height, width)`` per image): the base
        image plus the grid crops of each image, in the model's current grid mode."""
        if image_sizes is None:
            return []
        geometry = model_geometry(model)
        crop = model.config.vision_config.image_size
        units = []
        for size in image_sizes:
            rows, cols = crop_grid(tuple(int(s) for s in size), model.config.image_grid_pinpoints, crop)
            units.extend([geometry] * (1 + rows * cols))
        return units

    def language_model(self, model: Any) -> Any:
        return model.model.language_model

    def visual_token_id(self, model: Any) -> int:
        return int(model.config.image_token_id)

    def apply(self, model: Any, method: str | MethodConfig, **options: Any) -> Any:
        config = self.build_config(model, method, **options)  # refuses every method: no stage is integrated yet
        if config.name != "none":
            raise CompressionConfigError(f"method {config.name!r} is not integrated with LLaVA-NeXT yet")
        return model

    def remove(self, model: Any) -> Any:
        return model

    def applied_config(self, model: Any) -> MethodConfig:
        return NoCompression()

    def last_trace(self, model: Any) -> list[dict[str, Any]] | None:
        return None

    def model_geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)


FAMILY = register_family(LlavaNextFamily())
