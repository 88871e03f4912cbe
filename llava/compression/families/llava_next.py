"""The LLaVA-NeXT (LLaVA-1.6) family: ``LlavaNextForConditionalGeneration``, loading and geometry only so far.

What works now: the family is registered (``python -m llava.compression.families`` lists it), it says what one
visual unit is (one crop's 24x24 CLIP grid with [CLS]) and which units an image becomes
(:meth:`LlavaNextFamily.unit_geometries`: the base image plus its anyres crops), and it owns the grid mode of a
model instance (:func:`set_grid_mode`): LLaVA-1.6's own ``anyres`` packing, or FasterVLM's ``fixed-672`` setting
(grid fixed at 2 x 2 crops, ``spatial`` merge without unpadding or ``image_newline``: 5 x 576 = 2880 tokens).

Methods (``stages`` = in-encoder, pre-LLM and in-LLM; an in-encoder + in-LLM method, FiCoCo-VL, is refused):

* pre-LLM methods run **per crop** (the base image and every grid crop is one "image" of the method, with its own
  [CLS]; ``T`` is per crop, FasterVLM's convention: 5T on the fixed 2 x 2 grid). The instance's
  ``get_image_features`` is replaced (:func:`_get_image_features`); the kept tokens keep their place in the packed
  sequence: base crop first, then the grid crops' kept tokens in the merged map's row-major order. In ``anyres``
  packing, tokens that ``unpad`` cuts away are dropped as LLaVA-1.6 drops them, and a row of the map keeps its
  ``image_newline`` only when at least one of its tokens is kept (a row whose tokens are all dropped loses its
  newline). ``generate`` is wrapped to shrink each image's placeholder run to its packed count.
* ``budget_mode="global"`` (fastervlm only): one budget of ``T`` x crops per image, the top scores over its crops.
* in-encoder methods (ToMe, FiCoCo-V) merge inside the tower per crop (``families/clip_merging.py``'s tower run);
  each merged token stands at the patch it started as and is packed like a pre-LLM method's token.
* in-LLM methods run on the full sequence through ``families/decoder_pruning.py`` (every image-token position,
  newlines included, is visual).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.compression.families import instance_state, register_family
from llava.compression.families.anyres import (
    ANYRES,
    FIXED_672,
    check_grid_mode,
    crop_grid,
    grid_pinpoints_for,
    unpadded_grid,
)
from llava.compression.families.contract import Family
from llava.compression.families.llava import (
    CompressedImageFeatures,
    _pad_id,
    reduce_and_project,
    tower_signals,
)
from llava.compression.methods.fastervlm import FasterVLMConfig, cls_patch_scores
from llava.compression.placeholders import find_image_spans, restore_prompts, shrink_placeholder_runs
from llava.compression.pre_llm import PreLLMMethod, Reduction, selection_reduction
from llava.compression.primitives import topk_indices
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    NoCompression,
    Stage,
    get_method,
)

FAMILY_NAME = "llava-next"
GRID_ATTR = "_llava_next_grid"  # on the LlavaNextModel instance: (mode, the checkpoint's own pinpoints)
STATE_ATTR = "_vtc_next_compression_state"  # on the LlavaNextModel instance while a pre-LLM method is applied
PER_CROP, GLOBAL = "per-crop", "global"
BUDGET_MODES = (PER_CROP, GLOBAL)


@dataclass
class _State:
    config: PreLLMMethod
    spec: MethodSpec
    geometry: ModelGeometry
    layers: tuple[int, ...]
    saved: dict[str, tuple[Any, Any]]  # attribute -> (owner, previous instance attribute or None)
    budget_mode: str = PER_CROP
    encoder_method: Any = None  # the VisionEncoderMethod of an in-encoder method (merging inside each crop's tower)
    last_trace: list[dict[str, Any]] | None = None


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


# -- applying a method -----------------------------------------------------------------------------------------------


def check_budget_mode(config: MethodConfig, budget_mode: str | None) -> None:
    """Refuse a ``budget_mode`` that is unknown or that ``config`` does not implement (``global``: fastervlm only;
    ``None`` = the default, per crop). The evaluation entry points call this before the model loads."""
    if budget_mode is None:
        return
    if budget_mode not in BUDGET_MODES:
        raise CompressionConfigError(f"budget_mode must be one of {', '.join(BUDGET_MODES)}, got {budget_mode!r}")
    if budget_mode == GLOBAL and not isinstance(config, FasterVLMConfig):
        raise CompressionConfigError(
            f"budget_mode global is implemented for fastervlm only on LLaVA-NeXT (method {config.name!r} is per crop;"
            " drop --budget-mode global)"
        )


def apply(model: Any, method: str | MethodConfig, budget_mode: str | None = None, **options: Any) -> Any:
    """Apply ``method`` to this LLaVA-NeXT instance (pre-LLM: per crop; in-LLM: on the full sequence); returns
    ``model``. ``"none"`` removes what is applied. Validation (stages, [CLS], the per-crop budget) comes first.

    ``budget_mode`` (pre-LLM only): ``"per-crop"`` (default, FasterVLM's convention: ``T`` per crop) or
    ``"global"`` (fastervlm only: one budget of ``T`` x crops per image, the top scores over all its crops)."""
    config = FAMILY.build_config(model, method, **options)
    spec = get_method(config.name)
    check_budget_mode(config, budget_mode)
    remove(model)
    if isinstance(config, NoCompression):
        return model
    geometry = model_geometry(model)
    if spec.stages == (Stage.LLM,):
        from llava.compression.families import decoder_pruning

        return decoder_pruning.apply(model, config, geometry)
    encoder_method = None
    if spec.stages == (Stage.VISION_ENCODER,):
        from llava.compression.families import clip_merging

        encoder_method = clip_merging.vision_part(config, geometry)
        encoder_method.validate(geometry)
    elif spec.stages != (Stage.PRE_LLM,) or not isinstance(config, PreLLMMethod):
        raise CompressionConfigError(
            f"method {spec.name!r} acts at stage(s) {[s.value for s in spec.stages]}, which the LLaVA-NeXT "
            "integration does not provide yet (it runs pre-LLM and in-LLM methods)"
        )
    strategy = model.config.vision_feature_select_strategy
    if strategy != "default":
        raise CompressionConfigError(f"vision_feature_select_strategy={strategy!r}: only 'default' is supported")
    layers = () if encoder_method is not None else tuple(sorted(set(config.probe_layers(geometry))))
    return instance_state.install(
        model, STATE_ATTR,
        lambda saved: _State(config=config, spec=spec, geometry=geometry, layers=layers, saved=saved,
                             budget_mode=budget_mode or PER_CROP, encoder_method=encoder_method),
        _get_image_features, _generate,
    )


def remove(model: Any) -> Any:
    """Undo :func:`apply` (no-op when nothing is applied; the grid mode stays); returns ``model``."""
    return instance_state.remove(model, STATE_ATTR)


def applied_config(model: Any) -> MethodConfig:
    return instance_state.applied_config(model, STATE_ATTR)


def last_trace(model: Any) -> list[dict[str, Any]] | None:
    """Per image for a pre-LLM method (each with ``crops``: one trace per crop), per batch row for an in-LLM one."""
    return instance_state.last_trace(model, STATE_ATTR)


def _state_of(model: Any) -> _State | None:
    return instance_state.state_of(model, STATE_ATTR)


def prepare_multimodal_inputs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor,
    pad_token_id: int | None = None,
    **encoder_kwargs: Any,
) -> dict[str, Any]:
    """Encode the images (with the applied method) and shrink each image's placeholder run to its packed count.

    Returns ``{"input_ids", "attention_mask", "mm_encoder_outputs", "compression_trace"}`` for ``model(...)`` or
    the unwrapped ``generate``."""
    state = _state_of(model)
    encoded = model.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes, **encoder_kwargs)
    feats = list(encoded.pooler_output)
    counts = [int(f.shape[0]) for f in feats]
    image_token_id = model.config.image_token_id
    spans = find_image_spans(input_ids, attention_mask, image_token_id, len(feats), None)
    new_ids, new_mask = shrink_placeholder_runs(
        input_ids, attention_mask, image_token_id, counts, _pad_id(model, pad_token_id), tokens_per_image=None
    )
    traces = getattr(encoded, "compression_trace", None)
    traces = [{**t, "row": s.row} for t, s in zip(traces, spans)] if traces is not None else None
    if state is not None:
        state.last_trace = traces
    return {
        "input_ids": new_ids,
        "attention_mask": new_mask,
        "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=feats)},
        "compression_trace": traces,
    }


def _token_positions(reduction: Reduction, crop: int) -> torch.Tensor:
    """The patch index (in the crop's grid) each output token of ``crop`` stands at, ``-1`` for a token with no
    place (a [CLS] token, a merged token none of whose patches is a kept index). With ``groups``: the kept patch of
    the token's group (the first when several); without: the kept indices in order (a pure selection)."""
    kept = reduction.kept_indices[crop].long()
    count = int(reduction.features[crop].shape[0])
    groups = None if reduction.groups is None else reduction.groups[crop]
    if groups is None:
        if kept.numel() != count:
            raise CompressionConfigError(
                "this method's output tokens have no patch positions, so they cannot be packed into LLaVA-NeXT's grid"
            )
        return kept
    positions = torch.full((count,), -1, dtype=torch.long, device=kept.device)
    for patch in kept.flip(0).tolist():  # descending, so the first kept patch of a group wins
        token = int(groups[patch])
        if token >= 0:
            positions[token] = patch
    return positions


def _pack_kept(
    self: Any, feats: list[torch.Tensor], positions: list[torch.Tensor], image_size: Any, mode: str
) -> torch.Tensor:
    """One image's packed sequence from its crops' kept tokens: the base crop's tokens in the method's order, then
    the grid crops' tokens in the merged map's row-major order (``anyres``: unpadded, a newline after every row
    that kept a token), then the grid crops' tokens without a place (``-1`` positions) in crop order."""
    newline = self.image_newline
    base_tokens = feats[0]
    if len(feats) == 1:
        if mode == FIXED_672:
            return base_tokens
        return torch.cat((base_tokens, newline[None].to(base_tokens)), dim=0)
    crop = self.config.vision_config.image_size
    side = crop // self.config.vision_config.patch_size
    size = tuple(int(s) for s in image_size)
    rows, cols = crop_grid(size, self.config.image_grid_pinpoints, crop)
    full_height, full_width = rows * side, cols * side
    height, width = full_height, full_width
    if mode == ANYRES:
        height, width = unpadded_grid(size, full_height, full_width)
    top, left = (full_height - height) // 2, (full_width - width) // 2
    tokens = torch.cat(feats[1:])
    crop_of = torch.cat([torch.full_like(p, c) for c, p in enumerate(positions[1:])])
    patch = torch.cat(positions[1:])
    placeless = tokens[patch < 0]
    tokens, crop_of, patch = tokens[patch >= 0], crop_of[patch >= 0], patch[patch >= 0]
    row = (crop_of // cols) * side + patch // side - top
    col = (crop_of % cols) * side + patch % side - left
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    tokens, row, col = tokens[inside], row[inside], col[inside]
    order = torch.argsort(row * width + col, stable=True)
    tokens, row = tokens[order], row[order]
    if mode == FIXED_672:
        return torch.cat((base_tokens, tokens, placeless), dim=0)
    _, per_row = torch.unique_consecutive(row, return_counts=True)
    pieces = [base_tokens]
    for row_tokens in torch.split(tokens, per_row.tolist()):
        pieces.extend((row_tokens, newline[None].to(row_tokens)))
    pieces.append(placeless)
    return torch.cat(pieces, dim=0)


def _get_image_features(
    self: Any,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor,
    vision_feature_layer: int | list[int] | None = None,
    vision_feature_select_strategy: str | None = None,
    **kwargs: Any,
) -> CompressedImageFeatures:
    """``LlavaNextModel.get_image_features`` with the applied pre-LLM method run on every crop before the
    projector, then packed by :func:`_pack_kept` in the instance's grid mode."""
    state: _State = self.__dict__[STATE_ATTR]
    layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
    if layer != state.geometry.vision_feature_layer or strategy != "default":
        raise ValueError(
            f"compression was applied for vision_feature_layer={state.geometry.vision_feature_layer} and the "
            f"'default' strategy; got {layer!r} / {strategy!r}"
        )
    kwargs.pop("return_dict", None)
    crop = self.config.vision_config.image_size
    crops_per_image = [
        1 + rows * cols
        for rows, cols in (crop_grid(tuple(int(s) for s in size), self.config.image_grid_pinpoints, crop) for size in image_sizes)
    ]
    if pixel_values.dim() == 5:
        pixel_values = torch.cat([p[:n] for p, n in zip(pixel_values, crops_per_image)], dim=0)
    if state.encoder_method is not None:
        return _merged_image_features(self, state, pixel_values, image_sizes, crops_per_image, **kwargs)
    signals, out = tower_signals(
        self.vision_tower, pixel_values, state.layers, state.geometry, self.multi_modal_projector,
        with_image_keys=state.config.needs_image_keys, **kwargs,
    )
    if state.budget_mode == GLOBAL:
        reduction = _global_selection(state.config, signals, crops_per_image)
        counts = [int(f.shape[0]) for f in reduction.features]
        feats = list(torch.split(self.multi_modal_projector(torch.cat(reduction.features)), counts))
    else:
        feats, reduction = reduce_and_project(state.config, signals, self.multi_modal_projector)
    saved = self.__dict__.get(GRID_ATTR)
    mode = ANYRES if saved is None else saved[0]
    packed, traces, start = [], [], 0
    for size, count in zip(image_sizes, crops_per_image):
        crops = range(start, start + count)
        positions = [_token_positions(reduction, c) for c in crops]
        packed.append(_pack_kept(self, feats[start : start + count], positions, size, mode))
        traces.append({"visual_tokens": int(packed[-1].shape[0]), "grid_mode": mode, "budget_mode": state.budget_mode,
                       "crops": [reduction.trace(c) for c in crops]})
        start += count
    state.last_trace = traces
    return CompressedImageFeatures(
        last_hidden_state=out.last_hidden_state,
        pooler_output=packed,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
        compression_trace=traces,
    )


def _merged_image_features(
    self: Any, state: _State, pixel_values: torch.Tensor, image_sizes: Any, crops_per_image: list[int], **kwargs: Any
) -> CompressedImageFeatures:
    """An in-encoder method on every crop (``families/clip_merging.py``'s tower run), packed like a pre-LLM
    method's output: each merged token stands at the patch it started as."""
    from llava.compression.families import clip_merging

    feats, out, tokens = clip_merging.encode_and_project(self, pixel_values, state.encoder_method, state.geometry,
                                                         **kwargs)
    extras = state.encoder_method.trace_extras()
    saved = self.__dict__.get(GRID_ATTR)
    mode = ANYRES if saved is None else saved[0]
    packed, traces, start = [], [], 0
    for size, count in zip(image_sizes, crops_per_image):
        crops = range(start, start + count)
        positions = [tokens.positions[c].long() for c in crops]
        packed.append(_pack_kept(self, feats[start : start + count], positions, size, mode))
        traces.append({"visual_tokens": int(packed[-1].shape[0]), "grid_mode": mode, "budget_mode": state.budget_mode,
                       "crops": [{**tokens.trace(c), **extras} for c in crops]})
        start += count
    state.last_trace = traces
    return CompressedImageFeatures(last_hidden_state=out.last_hidden_state, pooler_output=packed,
                                   hidden_states=out.hidden_states, attentions=out.attentions,
                                   compression_trace=traces)


def _global_selection(config: FasterVLMConfig, signals: Any, crops_per_image: list[int]) -> Reduction:
    """FasterVLM with one budget per image: ``T`` x (its crops) tokens, the top [CLS]-attention scores over all its
    crops' patches (each crop's score is a distribution over its own patches, so they compare across crops); a crop
    may keep any count, none included. Ascending per crop."""
    scores = cls_patch_scores(signals, signals.feature_layer, config.head_reduction)  # [crops, N]
    n = scores.shape[1]
    patches = signals.patches
    feats, kept, groups, start = [], [], [], 0
    for count in crops_per_image:
        picks = topk_indices(scores[start : start + count].reshape(1, count * n), config.visual_token_num * count)[0]
        crop_of, patch_of = picks // n, picks % n
        for c in range(count):
            idx = patch_of[crop_of == c]
            one = selection_reduction(patches[start + c : start + c + 1], idx[None])
            feats.append(one.features[0])
            kept.append(one.kept_indices[0])
            groups.append(one.groups[0])
        start += count
    return Reduction(features=feats, kept_indices=kept, groups=groups)


def _generate(self: Any, inputs: torch.Tensor | None = None, *args: Any, **kwargs: Any):
    """``generate`` that encodes the images with the applied method and shrinks the placeholder runs first; the
    returned sequences start with the caller's original prompts."""
    state: _State = self.model.__dict__[STATE_ATTR]
    _, previous = state.saved["generate"]
    original = previous if previous is not None else types.MethodType(type(self).generate, self)
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    pixel_values = kwargs.pop("pixel_values", None)
    if pixel_values is None or input_ids is None or kwargs.get("mm_encoder_outputs") is not None:
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        return original(input_ids, *args, **kwargs)
    image_sizes = kwargs.pop("image_sizes", None)
    if image_sizes is None:
        raise ValueError("LLaVA-NeXT generate with pixel_values needs image_sizes (the processor returns them)")
    encoder_kwargs = {k: kwargs.pop(k) for k in ("vision_feature_layer", "vision_feature_select_strategy") if k in kwargs}
    prepared = prepare_multimodal_inputs(
        self, input_ids, kwargs.pop("attention_mask", None), pixel_values, image_sizes,
        pad_token_id=kwargs.get("pad_token_id"), **encoder_kwargs,
    )
    shrunk = prepared["input_ids"]
    result = original(
        shrunk, *args, attention_mask=prepared["attention_mask"], mm_encoder_outputs=prepared["mm_encoder_outputs"],
        **kwargs,
    )
    if isinstance(result, torch.Tensor):
        result = restore_prompts(result, input_ids, shrunk.shape[1])
    elif getattr(result, "sequences", None) is not None:
        result.sequences = restore_prompts(result.sequences, input_ids, shrunk.shape[1])
    result.compression_trace = prepared["compression_trace"]
    return result


# -- the family ------------------------------------------------------------------------------------------------------


class LlavaNextFamily(Family):
    """LLaVA-NeXT / LLaVA-1.6: an image = a base crop plus anyres grid crops, each a 24x24 CLIP grid with [CLS]."""

    name = FAMILY_NAME
    stages = (Stage.VISION_ENCODER, Stage.PRE_LLM, Stage.LLM)
    provides = frozenset({"cls"})

    def supports(self, model: Any) -> bool:
        return supports(model)

    def refusal(self, spec: MethodSpec) -> str | None:
        if Stage.VISION_ENCODER in spec.stages and len(spec.stages) > 1:
            return (
                f"method {spec.name!r} acts at stages {[s.value for s in spec.stages]}; on LLaVA-NeXT in-encoder "
                "merging runs alone per crop (FiCoCo publishes no NeXT setting for its combined stages; use ficoco-v or "
                "ficoco-l, docs/methods.md)"
            )
        return super().refusal(spec)

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
        return apply(model, method, **options)

    def remove(self, model: Any) -> Any:
        return remove(model)

    def applied_config(self, model: Any) -> MethodConfig:
        return applied_config(model)

    def last_trace(self, model: Any) -> list[dict[str, Any]] | None:
        return last_trace(model)

    def describe(self, model: Any) -> dict[str, Any]:
        """The base description plus the grid mode and, for a pre-LLM method, its budget mode."""
        described = {**super().describe(model), "grid_mode": grid_mode(model)}
        state = _state_of(model)
        if state is not None:
            described["budget_mode"] = state.budget_mode
        return described

    def prepare_multimodal_inputs(self, model: Any, input_ids: Any, attention_mask: Any, pixel_values: Any,
                                  image_sizes: Any = None, **kwargs: Any):
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes with pixel_values (the image processor returns them)")
        return prepare_multimodal_inputs(model, input_ids, attention_mask, pixel_values, image_sizes, **kwargs)

    def model_geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)


FAMILY = register_family(LlavaNextFamily())
