"""The Qwen2.5-VL family: transformers' ``Qwen2_5_VLForConditionalGeneration`` (5.23).

One visual unit is one image at its own resolution: the processor resizes it to multiples of 28 px within
``[min_pixels, max_pixels]``, the window-attention tower encodes ``image_grid_thw = (1, h, w)`` patches of 14 px and
the merger turns every 2x2 block into one LLM token, so an image gives ``h/2 x w/2`` tokens (no [CLS]).

Methods:

* pre-LLM methods that need no [CLS] token (DivPrune, random, pool) run **per image on the merged tokens** (the
  merger's output, already in the LLM's space, so nothing is projected afterwards). ``T`` (``visual_token_num``)
  is the most tokens an image keeps; an image with at most ``T`` tokens keeps all of them. ``pool`` pools each
  image's merged grid to ``h' x w' = T`` cells when ``T`` factors within the grid, else to the largest grid of at
  most ``T`` cells closest to the image's aspect ratio. Methods that read [CLS] attention (FasterVLM, VTC-CLS,
  PruMerge, PruMerge+, VisionZip) are refused: the family provides no ``"cls"``;
* in-LLM methods (FastV, PyramidDrop, SparseVLM, DART) run on Qwen's decoder through
  ``families/decoder_pruning.py`` with the M-RoPE ``cos``/``sin`` the decoder layers receive (the model's own
  rotary embedding); dropped tokens keep nothing, kept tokens keep their ``(t, h, w)`` positions
  (``llm_positions="original"``, the default here: renumbering 3-axis positions is not defined, so ``compact`` is
  refused).

Positions (:func:`prepare_multimodal_inputs`): the M-RoPE positions of the **full** sequence come from the model's
``get_rope_index`` (the full ``image_grid_thw``); the kept tokens take theirs, so each kept visual token keeps its
``(t, h, w)`` and the text after the image continues where it would have. They are passed to ``generate`` as
``position_ids`` (``[4, B, T']``: the text row ``generate`` itself would build, then the three M-RoPE rows), which
``generate`` advances by one per decoded token; ``rope_deltas`` are set to match. The placeholder run of each image
and ``mm_token_type_ids`` shrink to its kept count.

Nothing is patched at class level: ``get_image_features`` of the ``Qwen2_5_VLModel`` and ``generate`` of the model
are replaced on the instance while a pre-LLM method is applied.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.compression.families import instance_state, register_family
from llava.compression.families.contract import Family
from llava.compression.families.llava import CompressedImageFeatures, pixel_key
from llava.compression.methods.pool import PoolConfig, pool_grid
from llava.compression.placeholders import find_image_spans, restore_prompts
from llava.compression.pre_llm import PreLLMMethod, VisionSignals
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    NoCompression,
    Stage,
    get_method,
)

FAMILY_NAME = "qwen2.5-vl"
STATE_ATTR = "_vtc_qwen_compression_state"  # on the Qwen2_5_VLModel instance while a pre-LLM method is applied
PIXELS_ATTR = "_vtc_qwen_max_pixels"  # on the Qwen2_5_VLModel instance: the processor's max_pixels (geometry)
DEFAULT_MAX_PIXELS = 28 * 28 * 16384  # Qwen2.5-VL's processor default


@dataclass
class _State:
    config: PreLLMMethod
    spec: MethodSpec
    geometry: ModelGeometry
    saved: dict[str, tuple[Any, Any]]  # attribute -> (owner, previous instance attribute or None)
    last_trace: list[dict[str, Any]] | None = None


@dataclass
class QwenImageFeatures(CompressedImageFeatures):
    """``get_image_features`` output under a pre-LLM method: ``pooler_output`` one ``[k_i, D]`` tensor per image,
    ``kept_positions`` one ``[k_i]`` long tensor per image: the merged token (raster index in the image's merged
    grid) each output token stands at, ascending."""

    kept_positions: list[torch.Tensor] | None = field(default=None)


def supports(model: Any) -> bool:
    return isinstance(model, Qwen2_5_VLForConditionalGeneration)


def _base(model: Any) -> Any:
    return model.model if isinstance(model, Qwen2_5_VLForConditionalGeneration) else model


def set_max_pixels(model: Any, max_pixels: int) -> Any:
    """Record the processor's ``max_pixels`` on this instance: the geometry's token count (what a budget is
    validated against and what PyramidDrop solves its ratio on) is the most merged tokens one image can give."""
    _base(model).__dict__[PIXELS_ATTR] = int(max_pixels)
    return model


def model_geometry(model: Any) -> ModelGeometry:
    """The largest image the processor makes: ``max_pixels / 28^2`` merged tokens on a square grid, no [CLS]. Per
    image geometries come from ``image_grid_thw`` (:func:`image_geometry`)."""
    vc = model.config.vision_config
    return nominal_geometry(vc.patch_size, vc.spatial_merge_size, vc.depth,
                            model.config.text_config.num_hidden_layers,
                            _base(model).__dict__.get(PIXELS_ATTR, DEFAULT_MAX_PIXELS))


def nominal_geometry(patch_size: int, merge_size: int, vision_layers: int, llm_layers: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> ModelGeometry:
    """The geometry of the largest image of ``max_pixels``: ``max_pixels / (patch * merge)^2`` merged tokens (made
    square), no [CLS], features from the last block (what the merger reads)."""
    tokens = max(1, int(max_pixels) // (patch_size * merge_size) ** 2)
    side = math.isqrt(tokens)
    return ModelGeometry(
        num_patches=side * side,
        grid=(side, side),
        vision_layers=vision_layers,
        llm_layers=llm_layers,
        vision_feature_layer=-1,
        has_cls=False,
        family=FAMILY_NAME,
    )


def image_geometry(model: Any, grid_thw: Any) -> ModelGeometry:
    """One image's geometry: its merged grid ``(t * h / 2, w / 2)``."""
    rows, cols = merged_grid(model, grid_thw)
    return replace(model_geometry(model), num_patches=rows * cols, grid=(rows, cols))


def merged_grid(model: Any, grid_thw: Any) -> tuple[int, int]:
    merge = model.config.vision_config.spatial_merge_size
    t, h, w = (int(x) for x in grid_thw)
    return t * h // merge, w // merge


# -- applying a method -----------------------------------------------------------------------------------------------


def default_options(spec: MethodSpec, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with this family's defaults: in-LLM methods keep original (t, h, w) positions here (``compact``
    renumbering is not defined for M-RoPE, and is refused)."""
    if spec.stages == (Stage.LLM,) and "llm_positions" in getattr(spec.config_cls, "__dataclass_fields__", {}):
        if options.get("llm_positions") not in (None, "original"):
            raise CompressionConfigError(
                f"method {spec.name!r} on {FAMILY_NAME}: --llm-positions {options['llm_positions']} is not defined for "
                "M-RoPE (3-axis) positions; kept tokens keep their (t, h, w) positions (--llm-positions original)"
            )
        return {**options, "llm_positions": "original"}
    return options


def apply(model: Any, method: str | MethodConfig, **options: Any) -> Any:
    """Apply ``method`` to this Qwen2.5-VL instance; returns ``model``. ``"none"`` removes what is applied."""
    if not supports(model):
        raise TypeError(f"the {FAMILY_NAME} family handles Qwen2_5_VLForConditionalGeneration, not {type(model).__name__}")
    if isinstance(method, str):
        options = default_options(get_method(method), options)
    elif getattr(method, "llm_positions", "original") != "original":
        options = default_options(get_method(method.name), {"llm_positions": method.llm_positions})
    config = FAMILY.build_config(model, method, **options)
    spec = get_method(config.name)
    remove(model)
    if isinstance(config, NoCompression):
        return model
    geometry = model_geometry(model)
    if spec.stages == (Stage.LLM,):
        from llava.compression.families import decoder_pruning

        return decoder_pruning.apply(model, config, geometry)
    if spec.stages != (Stage.PRE_LLM,) or not isinstance(config, PreLLMMethod):
        raise CompressionConfigError(f"method {spec.name!r} is not integrated on {FAMILY_NAME}")
    return instance_state.install(
        model, STATE_ATTR, lambda saved: _State(config=config, spec=spec, geometry=geometry, saved=saved),
        _get_image_features, _generate,
    )


def remove(model: Any) -> Any:
    """Undo :func:`apply` (no-op when nothing is applied); returns ``model``."""
    return instance_state.remove(model, STATE_ATTR)


def applied_config(model: Any) -> MethodConfig:
    return instance_state.applied_config(model, STATE_ATTR)


def last_trace(model: Any) -> list[dict[str, Any]] | None:
    return instance_state.last_trace(model, STATE_ATTR)


def _state_of(model: Any) -> _State | None:
    return instance_state.state_of(model, STATE_ATTR)


# -- pre-LLM: reducing each image's merged tokens ------------------------------------------------------------------


def image_config(config: PreLLMMethod, grid: tuple[int, int]) -> PreLLMMethod | None:
    """The method's config for one image whose merged grid is ``grid``; ``None`` when the image keeps all its
    tokens (at most ``T`` of them). ``pool``: ``T`` cells when ``T`` factors within the grid, else the largest
    ``h' x w' <= T`` grid closest to the image's aspect ratio."""
    budget = getattr(config, "visual_token_num", None)
    rows, cols = grid
    if budget is None or budget >= rows * cols:
        return None
    if isinstance(config, PoolConfig) and pool_grid(budget, grid) is None:
        cells = max(h * w for h in range(1, rows + 1) for w in range(1, cols + 1) if h * w <= budget)
        return replace(config, visual_token_num=cells)
    return config


def reduce_image(config: PreLLMMethod, tokens: torch.Tensor, grid: tuple[int, int], geometry: ModelGeometry,
                 num_heads: int, image_key: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """One image: ``tokens`` ``[N, D]`` merged tokens on ``grid`` -> ``(kept [k, D], positions [k] ascending,
    trace)``. The tokens are in the LLM's space already (``project`` is the identity)."""
    n = tokens.shape[0]
    one = image_config(config, grid)
    if one is None:
        positions = torch.arange(n, device=tokens.device)
        return tokens, positions, {"visual_tokens": n, "kept_indices": positions.tolist()}
    signals = VisionSignals(
        tokens=tokens[None], grid=grid, feature_layer=geometry.feature_layer, num_layers=geometry.vision_layers,
        num_heads=num_heads, project=lambda x: x, image_keys=None if image_key is None else [image_key],
        has_cls=False,
    )
    reduction = one.reduce(signals)
    kept, positions = reduction.features[0], reduction.kept_indices[0].long().to(tokens.device)
    if kept.shape[0] != positions.numel():
        raise CompressionConfigError(f"{config.name}: its output tokens have no merged-grid positions on {FAMILY_NAME}")
    order = torch.argsort(positions, stable=True)
    return kept[order], positions[order], reduction.trace(0)


def _get_image_features(self: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None,
                        **kwargs: Any) -> QwenImageFeatures:
    """``Qwen2_5_VLModel.get_image_features`` with the applied pre-LLM method run on each image's merged tokens."""
    state: _State = self.__dict__[STATE_ATTR]
    kwargs.pop("return_dict", None)
    out = type(self).get_image_features(self, pixel_values, image_grid_thw, return_dict=True, **kwargs)
    patches_per_image = image_grid_thw.prod(-1).tolist()
    pixels = torch.split(pixel_values, patches_per_image) if state.config.needs_image_keys else None
    feats, positions, traces = [], [], []
    for i, (tokens, thw) in enumerate(zip(out.pooler_output, image_grid_thw)):
        grid = merged_grid(self, thw)
        key = pixel_key(pixels[i]) if pixels is not None else None
        kept, where, trace = reduce_image(state.config, tokens, grid, state.geometry, self.visual.config.num_heads, key)
        feats.append(kept)
        positions.append(where)
        traces.append({**trace, "visual_tokens": int(kept.shape[0]), "grid": list(grid)})
    state.last_trace = traces
    return QwenImageFeatures(last_hidden_state=out.last_hidden_state, pooler_output=feats,
                             compression_trace=traces, kept_positions=positions)


# -- placeholders and M-RoPE positions -----------------------------------------------------------------------------


def token_type_ids(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """``mm_token_type_ids`` as Qwen's processor makes them: 1 on image placeholders, 2 on video ones, 0 else."""
    types_ = torch.zeros_like(input_ids, dtype=torch.int)
    types_[input_ids == model.config.image_token_id] = 1
    types_[input_ids == model.config.video_token_id] = 2
    return types_


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The text row ``generate`` builds for ``position_ids``: running count of attended tokens, 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def shrink_with_positions(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_grid_thw: torch.Tensor,
    kept_positions: list[torch.Tensor],
    pad_token_id: int | None = None,
    mm_token_type_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Keep image ``i``'s placeholders at ``kept_positions[i]`` (indices into its full run), drop the others, and
    re-pad on the left. Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``position_ids``
    (``[4, B, T']``: the text row, then the M-RoPE rows the kept tokens had in the full sequence) and
    ``rope_deltas`` (``[B, 1]``, what ``get_rope_index`` would report for the shrunk rows)."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    valid = mask.bool()
    if bool(((input_ids == model.config.video_token_id) & valid).any()):
        raise ValueError(f"{FAMILY_NAME}: prompts with videos are not integrated with compression yet (images only)")
    types_ = token_type_ids(model, input_ids) if mm_token_type_ids is None else mm_token_type_ids
    rope, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=types_, image_grid_thw=image_grid_thw,
                                         attention_mask=mask)
    keep = valid.clone()
    image_id = model.config.image_token_id
    spans = find_image_spans(input_ids, mask, image_id, len(kept_positions))
    for span, kept, thw in zip(spans, kept_positions, image_grid_thw):
        rows, cols = merged_grid(model, thw)
        if span.end - span.start != rows * cols:
            raise ValueError(f"an image of grid {tuple(int(x) for x in thw)} needs {rows * cols} placeholders, the "
                             f"prompt holds {span.end - span.start}")
        keep[span.row, span.start : span.end] = False
        keep[span.row, span.start + kept.to(input_ids.device)] = True
    counts = keep.sum(dim=1)
    length = int(counts.max()) if counts.numel() else 0
    batch = input_ids.shape[0]
    pad = _pad_id(model, pad_token_id)
    new_ids = input_ids.new_full((batch, length), pad)
    new_mask = torch.zeros((batch, length), dtype=mask.dtype, device=input_ids.device)
    new_types = torch.zeros((batch, length), dtype=types_.dtype, device=input_ids.device)
    new_rope = rope.new_zeros((3, batch, length))
    for r in range(batch):
        idx = torch.nonzero(keep[r]).flatten()
        start = length - idx.numel()
        new_ids[r, start:] = input_ids[r, idx]
        new_mask[r, start:] = 1
        new_types[r, start:] = types_[r, idx]
        new_rope[:, r, start:] = rope[:, r, idx]
    top = new_rope.masked_fill(~new_mask.bool()[None], -1).amax(dim=(0, 2))
    deltas = (top + 1 - new_mask.sum(dim=1)).unsqueeze(1)
    position_ids = torch.cat([text_positions(new_mask)[None], new_rope], dim=0)
    return {"input_ids": new_ids, "attention_mask": new_mask, "mm_token_type_ids": new_types,
            "position_ids": position_ids, "rope_deltas": deltas}


def _pad_id(model: Any, pad_token_id: int | None) -> int:
    """The id written into new padding: the caller's, else the generation config's, else the text config's."""
    for candidate in (pad_token_id, getattr(getattr(model, "generation_config", None), "pad_token_id", None),
                      getattr(model.config.text_config, "pad_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def prepare_multimodal_inputs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    pad_token_id: int | None = None,
    mm_token_type_ids: torch.Tensor | None = None,
    image_features: Any = None,
) -> dict[str, Any]:
    """Encode the images (with the applied pre-LLM method, unless ``image_features`` is given), shrink each image's
    placeholder run to its kept count and build the kept tokens' M-RoPE positions from the full sequence.

    Returns the keyword arguments of ``generate`` / ``forward``: ``input_ids``, ``attention_mask``,
    ``mm_token_type_ids``, ``position_ids`` (``[4, B, T']``), ``mm_encoder_outputs`` (absent without images),
    plus ``rope_deltas`` and ``compression_trace`` (one dict per image, with its batch ``row``; ``None`` without a
    method). Rows without images are only re-padded."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if pixel_values is None and image_features is None:
        types_ = token_type_ids(model, input_ids) if mm_token_type_ids is None else mm_token_type_ids
        text = text_positions(attention_mask)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": types_,
                "position_ids": torch.cat([text[None], text[None].expand(3, -1, -1)], dim=0),
                "rope_deltas": torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device),
                "compression_trace": None}
    if image_grid_thw is None:
        raise ValueError("Qwen2.5-VL needs image_grid_thw with its images (the image processor returns it)")
    encoded = image_features
    if encoded is None:
        encoded = model.model.get_image_features(pixel_values, image_grid_thw)
    feats = list(encoded.pooler_output)
    positions = getattr(encoded, "kept_positions", None)
    if positions is None:
        positions = [torch.arange(f.shape[0], device=input_ids.device) for f in feats]
    prepared = shrink_with_positions(model, input_ids, attention_mask, image_grid_thw, positions, pad_token_id,
                                     mm_token_type_ids)
    traces = getattr(encoded, "compression_trace", None)
    if traces is not None:
        spans = find_image_spans(input_ids, attention_mask, model.config.image_token_id, len(feats))
        traces = [{**t, "row": s.row} for t, s in zip(traces, spans)]
        state = _state_of(model)
        if state is not None:
            state.last_trace = traces
    prepared["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
    prepared["compression_trace"] = traces
    return prepared


def _generate(self: Any, inputs: torch.Tensor | None = None, *args: Any, **kwargs: Any):
    """``generate`` that encodes the images with the applied method, shrinks the placeholder runs and passes the
    kept tokens' original M-RoPE positions; the returned sequences start with the caller's original prompts."""
    state: _State = self.model.__dict__[STATE_ATTR]
    _, previous = state.saved["generate"]
    original = previous if previous is not None else types.MethodType(type(self).generate, self)
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    pixel_values = kwargs.pop("pixel_values", None)
    if pixel_values is None or input_ids is None or kwargs.get("mm_encoder_outputs") is not None:
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        return original(input_ids, *args, **kwargs)
    prepared = prepare_multimodal_inputs(
        self, input_ids, kwargs.pop("attention_mask", None), pixel_values, kwargs.pop("image_grid_thw", None),
        pad_token_id=kwargs.get("pad_token_id"), mm_token_type_ids=kwargs.pop("mm_token_type_ids", None),
    )
    result = generate_prepared(self, prepared, original, *args, **kwargs)
    shrunk = prepared["input_ids"]
    if isinstance(result, torch.Tensor):
        result = restore_prompts(result, input_ids, shrunk.shape[1])
    elif getattr(result, "sequences", None) is not None:
        result.sequences = restore_prompts(result.sequences, input_ids, shrunk.shape[1])
    result.compression_trace = prepared["compression_trace"]
    return result


def generate_prepared(model: Any, prepared: dict[str, Any], generate: Any = None, *args: Any, **kwargs: Any):
    """``generate`` on the output of :func:`prepare_multimodal_inputs` (explicit positions; ``rope_deltas`` set on
    the model as its own ``get_rope_index`` would for these rows)."""
    generate = generate or model.generate
    model.model.rope_deltas = prepared["rope_deltas"]
    inputs = {k: v for k, v in prepared.items() if k not in ("rope_deltas", "compression_trace")}
    return generate(*args, **inputs, **kwargs)


# -- the family ------------------------------------------------------------------------------------------------------


class Qwen2_5_VLFamily(Family):
    """Qwen2.5-VL: dynamic resolution, window-attention tower without [CLS], 2x2 merger, M-RoPE decoder."""

    name = FAMILY_NAME
    stages = (Stage.PRE_LLM, Stage.LLM)
    provides = frozenset()

    def supports(self, model: Any) -> bool:
        return supports(model)

    def geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)

    def unit_geometries(self, model: Any, image_grid_thw: Any = None, **inputs: Any) -> list[ModelGeometry]:
        """One geometry per image of ``image_grid_thw``: its merged grid."""
        return [] if image_grid_thw is None else [image_geometry(model, thw) for thw in image_grid_thw]

    def language_model(self, model: Any) -> Any:
        return model.model.language_model

    def visual_token_id(self, model: Any) -> int:
        return int(model.config.image_token_id)

    def position_embeddings(self, model: Any, hidden_states: Any, position_ids: Any) -> Any:
        """The decoder's own M-RoPE (``[3, B, T]`` positions; ``[B, T]`` is broadcast to the three axes)."""
        return self.language_model(model).rotary_emb(hidden_states, position_ids)

    def shrink_placeholders(self, model: Any, input_ids: Any, attention_mask: Any, counts: list[int],
                            pad_token_id: int | None = None, image_grid_thw: Any = None) -> tuple[Any, Any]:
        """Keep the first ``counts[i]`` placeholders of image ``i`` (use :func:`shrink_with_positions` to keep
        given ones with their positions)."""
        if image_grid_thw is None:
            raise ValueError("Qwen2.5-VL needs image_grid_thw to shrink placeholders (the positions depend on it)")
        kept = [torch.arange(int(c)) for c in counts]
        out = shrink_with_positions(model, input_ids, attention_mask, image_grid_thw, kept, pad_token_id)
        return out["input_ids"], out["attention_mask"]

    def apply(self, model: Any, method: str | MethodConfig, **options: Any) -> Any:
        return apply(model, method, **options)

    def remove(self, model: Any) -> Any:
        return remove(model)

    def applied_config(self, model: Any) -> MethodConfig:
        return applied_config(model)

    def last_trace(self, model: Any) -> list[dict[str, Any]] | None:
        return last_trace(model)

    def prepare_multimodal_inputs(self, model: Any, input_ids: Any, attention_mask: Any, pixel_values: Any,
                                  image_grid_thw: Any = None, **kwargs: Any):
        return prepare_multimodal_inputs(model, input_ids, attention_mask, pixel_values, image_grid_thw, **kwargs)

    def model_geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)


FAMILY = register_family(Qwen2_5_VLFamily())
