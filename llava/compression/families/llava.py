"""The LLaVA-1.5 family: transformers' ``LlavaForConditionalGeneration`` (5.23), one 24x24 grid + [CLS] per image.

:data:`FAMILY` (a :class:`LlavaFamily`, registered on import) answers the family contract
(``families/contract.py``); the module-level functions below are its stages, public for the other parts of the
toolkit (in-encoder merging, the latency harness). In-encoder methods go to ``families/clip_merging.py``, in-LLM
methods to the decoder engine ``families/decoder_pruning.py`` and pre-LLM methods run here:

Nothing is patched at class level and no attention backend is switched:

* the [CLS] query rows and keys a method needs come from forward hooks on
  ``vision_tower.encoder.layers[i].self_attn.q_proj`` / ``.k_proj``, installed only while images are encoded;
* ``model.model.get_image_features`` (the base ``LlavaModel``'s) is replaced on the instance by
  :func:`_get_image_features` (same parameter names, ``pixel_values`` first): it runs the tower, takes
  ``hidden_states[vision_feature_layer]``, reduces the tokens *before* the projector, projects them and returns a
  :class:`CompressedImageFeatures` whose ``pooler_output`` is a list of per-image ``[k_i, D]`` tensors and whose
  ``compression_trace`` holds one dict per image (``visual_tokens``, ``kept_indices``, method extras);
* ``model.generate`` is wrapped on the instance: it encodes the images first, shrinks each image's placeholder
  run in ``input_ids`` / ``attention_mask`` to its ``k_i`` (re-padded on the left) and calls the original
  ``generate`` with ``mm_encoder_outputs``. The returned sequences start with the caller's *original* prompts, as
  without compression, so slicing new tokens at ``input_ids.shape[1]`` keeps working. The traces of the last call
  are in :func:`last_trace` (each with the batch ``row`` of its image) and on the result as ``compression_trace``.

``forward`` is not wrapped: for a teacher-forced forward pass use :func:`prepare_multimodal_inputs`.
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.compression.families import instance_state, register_family
from llava.compression.families.contract import Family
from llava.compression.placeholders import find_image_spans, restore_prompts, shrink_placeholder_runs
from llava.compression.pre_llm import PreLLMMethod, Reduction, VisionSignals
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    NoCompression,
    Stage,
    get_method,
)

FAMILY_NAME = "llava-1.5"
STATE_ATTR = "_vtc_compression_state"


@dataclass
class CompressedImageFeatures(BaseModelOutputWithPooling):
    """``get_image_features`` output under compression.

    pooler_output: list of per-image ``[k_i, D]`` projected tokens (what the LLM receives).
    compression_trace: list (one per image) of JSON-serialisable dicts with at least ``visual_tokens`` (int) and
        ``kept_indices`` (ascending patch indices; for merge methods the kept / centre tokens).
    token_groups: list of per-image ``[N]`` long tensors, the output token each patch went into (-1 = dropped).
    """

    compression_trace: list[dict[str, Any]] | None = None
    token_groups: list[torch.Tensor] | None = None


@dataclass
class _State:
    config: PreLLMMethod
    spec: MethodSpec
    geometry: ModelGeometry
    layers: tuple[int, ...]
    saved: dict[str, tuple[Any, Any]]  # attribute -> (owner, previous instance attribute or None)
    last_trace: list[dict[str, Any]] | None = None


def supports(model: Any) -> bool:
    return isinstance(model, LlavaForConditionalGeneration)


def model_geometry(model: LlavaForConditionalGeneration | LlavaModel) -> ModelGeometry:
    """Patch grid, layer counts and feature layer read from the model's config."""
    cfg = model.config
    vc = cfg.vision_config
    side = vc.image_size // vc.patch_size
    vfl = cfg.vision_feature_layer
    if not isinstance(vfl, int):
        raise CompressionConfigError(
            f"vision_feature_layer={vfl!r}: only a single feature layer is supported"
        )
    return ModelGeometry(
        num_patches=side * side,
        grid=(side, side),
        vision_layers=vc.num_hidden_layers,
        llm_layers=cfg.text_config.num_hidden_layers,
        vision_feature_layer=vfl,
        has_cls=True,  # CLIP towers: [CLS] first, dropped by the 'default' feature select strategy
        family=FAMILY_NAME,
    )


def apply(model: LlavaForConditionalGeneration, method: str | MethodConfig, **method_kwargs: Any):
    """Compress ``model`` with ``method`` (a name plus its arguments, or a built config); returns ``model``.

    Everything is validated against the model's geometry before the model is touched. A previous method is
    replaced; ``"none"`` just removes it.
    """
    if not supports(model):
        raise TypeError(
            f"the llava integration handles LlavaForConditionalGeneration, not {type(model).__name__}"
        )
    config = _build_config(model, method, method_kwargs)
    spec = get_method(config.name)
    if isinstance(config, NoCompression):
        remove(model)
        return model
    # --- in-encoder methods (Stage.VISION_ENCODER: ToMe, FiCoCo-V) merge inside the CLIP tower
    #     (families/clip_merging.py); FiCoCo-VL adds its LLM stage through the in-LLM engine ---
    if Stage.VISION_ENCODER in spec.stages:
        from llava.compression.families import clip_merging

        remove(model)
        clip_merging.apply(model, config, spec)
        if Stage.LLM in spec.stages:
            from llava.compression.families import decoder_pruning

            geometry = model_geometry(model)
            decoder_pruning.apply(model, config.llm_for(geometry), geometry)
        return model
    # --- end in-encoder dispatch ---
    # --- in-LLM methods (Stage.LLM) run in the decoder-loop engine (families/decoder_pruning.py) ---
    if spec.stages == (Stage.LLM,):
        from llava.compression.families import decoder_pruning

        remove(model)
        return decoder_pruning.apply(model, config, model_geometry(model))
    # --- end in-LLM dispatch ---
    unsupported = [s.value for s in spec.stages if s is not Stage.PRE_LLM]
    if unsupported or not isinstance(config, PreLLMMethod):
        raise CompressionConfigError(
            f"method {spec.name!r} acts at stage(s) {unsupported or [s.value for s in spec.stages]}, which the LLaVA "
            "integration does not provide yet"
        )
    strategy = model.config.vision_feature_select_strategy
    if strategy != "default":
        raise CompressionConfigError(
            f"vision_feature_select_strategy={strategy!r}: only 'default' is supported"
        )
    geometry = model_geometry(model)
    layers = tuple(sorted(set(config.probe_layers(geometry))))
    remove(model)
    return instance_state.install(
        model, STATE_ATTR,
        lambda saved: _State(config=config, spec=spec, geometry=geometry, layers=layers, saved=saved),
        _get_image_features, _generate,
    )


def remove(model: Any) -> Any:
    """Undo :func:`apply` on ``model`` (no-op when nothing is applied); returns ``model``."""
    return instance_state.remove(model, STATE_ATTR)


def applied_config(model: Any) -> MethodConfig:
    """The config applied to ``model`` (``NoCompression`` when none)."""
    return instance_state.applied_config(model, STATE_ATTR)


def last_trace(model: Any) -> list[dict[str, Any]] | None:
    """Traces of the last call on ``model``: per image for a method acting on the vision side (the encoder's part
    of FiCoCo-VL included), per batch row of the last prefill for an in-LLM method; ``None`` before any call or
    without a method."""
    return instance_state.last_trace(model, STATE_ATTR)


def prepare_multimodal_inputs(
    model: LlavaForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor,
    pad_token_id: int | None = None,
    **encoder_kwargs: Any,
) -> dict[str, Any]:
    """Encode the images (with the applied method) and shrink the prompts' placeholder runs to match.

    Returns ``{"input_ids", "attention_mask", "mm_encoder_outputs", "compression_trace"}``; the first three can be
    passed to ``model(...)`` or ``model.generate(...)`` (not wrapped) directly. Traces carry the image's ``row``.
    """
    state = _state_of(model)
    encoded = model.model.get_image_features(pixel_values=pixel_values, **encoder_kwargs)
    feats = list(encoded.pooler_output)
    counts = [int(f.shape[0]) for f in feats]
    image_token_id = model.config.image_token_id
    per_image = state.geometry.num_patches if state is not None else None
    spans = find_image_spans(input_ids, attention_mask, image_token_id, len(feats), per_image)
    new_ids, new_mask = shrink_placeholder_runs(
        input_ids,
        attention_mask,
        image_token_id,
        counts,
        _pad_id(model, pad_token_id),
        tokens_per_image=per_image,
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


# -- internals --------------------------------------------------------------------------------------------------


def _build_config(model: Any, method: str | MethodConfig, kwargs: dict[str, Any]) -> MethodConfig:
    return FAMILY.build_config(model, method, **kwargs)


def _state_of(model: Any) -> _State | None:
    return instance_state.state_of(model, STATE_ATTR)


def _pad_id(model: Any, pad_token_id: int | None) -> int:
    for candidate in (
        pad_token_id,
        getattr(model.generation_config, "pad_token_id", None),
        getattr(model.config.text_config, "pad_token_id", None),
    ):
        if candidate is not None:
            return int(candidate[0] if isinstance(candidate, list | tuple) else candidate)
    return 0


def pixel_key(pixels: torch.Tensor) -> int:
    """A stable 63-bit digest of one image's pixel tensor (same pixels -> same key, whatever the batch)."""
    raw = pixels.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") >> 1


class QKProbe:
    """Forward hooks on the ``q_proj`` / ``k_proj`` of some encoder layers while the context is open."""

    def __init__(self, tower: torch.nn.Module, layers: tuple[int, ...]):
        self.tower, self.layers = tower, layers
        self.queries: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> QKProbe:
        for i in self.layers:
            attn = self.tower.encoder.layers[i].self_attn
            self._handles.append(
                attn.q_proj.register_forward_hook(self._store(self.queries, i, cls_only=True))
            )
            self._handles.append(attn.k_proj.register_forward_hook(self._store(self.keys, i, cls_only=False)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @staticmethod
    def _store(into: dict[int, torch.Tensor], layer: int, cls_only: bool):
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            into[layer] = output[:, :1].clone() if cls_only else output

        return hook


def collect_vision_signals(
    model: Any,
    pixel_values: torch.Tensor,
    layers: tuple[int, ...] = (),
    with_image_keys: bool = False,
    **tower_kwargs: Any,
) -> tuple[VisionSignals, Any]:
    """Run the vision tower of ``model`` (a ``LlavaForConditionalGeneration`` or its ``LlavaModel``) once and
    collect the :class:`VisionSignals` of the feature layer plus the [CLS] query rows and keys of ``layers``.

    Returns ``(signals, tower_output)``. Works whether or not a method is applied.
    """
    base = model.model if isinstance(model, LlavaForConditionalGeneration) else model
    return tower_signals(base.vision_tower, pixel_values, tuple(layers), model_geometry(base),
                         base.multi_modal_projector, with_image_keys, **tower_kwargs)


def tower_signals(
    tower: torch.nn.Module,
    pixel_values: torch.Tensor,
    layers: tuple[int, ...],
    geometry: ModelGeometry,
    projector: Any,
    with_image_keys: bool = False,
    **tower_kwargs: Any,
) -> tuple[VisionSignals, Any]:
    """Run a CLIP-style ``tower`` once on ``pixel_values`` (one image, crop or frame per row) with the q/k probe on
    ``layers``: the :class:`VisionSignals` of ``geometry``'s feature layer and the tower output. Every family
    with such a tower (LLaVA-1.5's images, Video-LLaVA's frames) collects its signals here."""
    vfl = geometry.vision_feature_layer
    output_hidden_states = tower_kwargs.pop("output_hidden_states", None) or (vfl if vfl != 0 else True)
    with QKProbe(tower, tuple(layers)) as probe:
        out = tower(pixel_values, output_hidden_states=output_hidden_states, return_dict=True, **tower_kwargs)
    signals = VisionSignals(
        tokens=out.hidden_states[vfl],
        grid=geometry.grid,
        feature_layer=geometry.feature_layer,
        num_layers=geometry.vision_layers,
        num_heads=tower.encoder.layers[0].self_attn.num_heads,
        queries=probe.queries,
        keys=probe.keys,
        project=projector,
        image_keys=[pixel_key(p) for p in pixel_values] if with_image_keys else None,
    )
    return signals, out


def reduce_and_project(
    config: PreLLMMethod, signals: VisionSignals, projector: torch.nn.Module
) -> tuple[list[torch.Tensor], Reduction]:
    """The pre-LLM stage after the tower: ``config.reduce(signals)``, then ``projector`` on the kept tokens of all
    images in one call (unless the method already projected them).

    Returns ``(per-image [k_i, D] features, the reduction)``.
    """
    reduction = config.reduce(signals)
    if reduction.projected:
        return list(reduction.features), reduction
    counts = [int(f.shape[0]) for f in reduction.features]
    projected = projector(torch.cat(reduction.features))
    return list(torch.split(projected, counts)), reduction


def check_feature_request(
    base: Any,
    geometry: ModelGeometry,
    vision_feature_layer: Any,
    vision_feature_select_strategy: str | None,
    image_sizes: Any,
) -> None:
    """A ``get_image_features`` call under compression must ask for what the method was applied for: the
    geometry's feature layer, the 'default' strategy ([CLS] dropped) and fixed-size images."""
    vfl = base.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    strategy = vision_feature_select_strategy or base.config.vision_feature_select_strategy
    if vfl != geometry.vision_feature_layer or strategy != "default":
        raise ValueError(
            f"compression was applied for vision_feature_layer={geometry.vision_feature_layer} and the "
            f"'default' strategy; got {vfl!r} / {strategy!r}"
        )
    if image_sizes is not None:
        raise ValueError("image_sizes (variable-size images) is not supported with compression")


def _get_image_features(
    self,
    pixel_values: torch.Tensor,
    vision_feature_layer: int | list[int] | None = None,
    vision_feature_select_strategy: str | None = None,
    image_sizes: torch.Tensor | None = None,
    **kwargs: Any,
) -> CompressedImageFeatures:
    """``LlavaModel.get_image_features`` with the applied pre-LLM method between the tower and the projector."""
    state: _State = self.__dict__[STATE_ATTR]
    check_feature_request(self, state.geometry, vision_feature_layer, vision_feature_select_strategy, image_sizes)
    kwargs.pop("return_dict", None)
    signals, out = collect_vision_signals(
        self, pixel_values, state.layers, with_image_keys=state.config.needs_image_keys, **kwargs
    )
    feats, reduction = reduce_and_project(state.config, signals, self.multi_modal_projector)
    traces = reduction.traces()  # one device-to-host copy, after the reduce and the projection
    state.last_trace = traces
    return CompressedImageFeatures(
        last_hidden_state=out.last_hidden_state,
        pooler_output=feats,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
        compression_trace=traces,
        token_groups=reduction.groups,
    )


def _generate(self, inputs: torch.Tensor | None = None, *args: Any, **kwargs: Any):
    """``generate`` that encodes images with the applied method and shrinks the placeholder runs first."""
    state: _State = self.model.__dict__[STATE_ATTR]
    _, previous = state.saved["generate"]
    original = previous if previous is not None else types.MethodType(type(self).generate, self)
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    pixel_values = kwargs.pop("pixel_values", None)
    if (
        pixel_values is None
        or input_ids is None
        or kwargs.get("mm_encoder_outputs") is not None
        or kwargs.get("inputs_embeds") is not None
    ):
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        return original(input_ids, *args, **kwargs)
    encoder_kwargs = {
        k: kwargs.pop(k)
        for k in ("vision_feature_layer", "vision_feature_select_strategy", "image_sizes")
        if k in kwargs
    }
    prepared = prepare_multimodal_inputs(
        self,
        input_ids,
        kwargs.pop("attention_mask", None),
        pixel_values,
        pad_token_id=kwargs.get("pad_token_id"),
        **encoder_kwargs,
    )
    shrunk = prepared["input_ids"]
    result = original(
        shrunk,
        *args,
        attention_mask=prepared["attention_mask"],
        mm_encoder_outputs=prepared["mm_encoder_outputs"],
        **kwargs,
    )
    if isinstance(result, torch.Tensor):
        result = restore_prompts(result, input_ids, shrunk.shape[1])
    elif getattr(result, "sequences", None) is not None:
        result.sequences = restore_prompts(result.sequences, input_ids, shrunk.shape[1])
    result.compression_trace = prepared["compression_trace"]
    return result


def shrink_placeholders(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    counts: list[int],
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink each image's run of ``image_token_id`` placeholders to its kept count (re-padded on the left)."""
    return shrink_placeholder_runs(
        input_ids,
        attention_mask,
        model.config.image_token_id,
        counts,
        _pad_id(model, pad_token_id),
        tokens_per_image=model_geometry(model).num_patches,
    )


class LlavaFamily(Family):
    """LLaVA-1.5: one image = one 24x24 CLIP grid with a [CLS] token; 1-D positions; Llama decoder."""

    name = FAMILY_NAME
    stages = (Stage.VISION_ENCODER, Stage.PRE_LLM, Stage.LLM)
    provides = frozenset({"cls"})

    def supports(self, model: Any) -> bool:
        return supports(model)

    def geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)

    def unit_geometries(self, model: Any, pixel_values: torch.Tensor | None = None, **inputs: Any) -> list[ModelGeometry]:
        """The fixed grid (+ [CLS]) once per image of ``pixel_values`` (``[B, 3, H, W]``)."""
        geometry = model_geometry(model)
        return [geometry] * (0 if pixel_values is None else int(pixel_values.shape[0]))

    def collect_vision_signals(self, model: Any, pixel_values: Any, layers: tuple[int, ...] = (), **options: Any):
        return collect_vision_signals(model, pixel_values, layers, **options)

    def shrink_placeholders(self, model, input_ids, attention_mask, counts, pad_token_id=None):
        return shrink_placeholders(model, input_ids, attention_mask, counts, pad_token_id)

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

    def model_geometry(self, model: Any) -> ModelGeometry:
        return model_geometry(model)

    def prepare_multimodal_inputs(self, model: Any, input_ids: Any, attention_mask: Any, pixel_values: Any, **kwargs: Any):
        return prepare_multimodal_inputs(model, input_ids, attention_mask, pixel_values, **kwargs)


FAMILY = register_family(LlavaFamily())
