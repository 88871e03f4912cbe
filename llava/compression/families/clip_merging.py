"""Token merging inside the CLIP vision encoder (``Stage.VISION_ENCODER``: ToMe, FiCoCo-V) of a LLaVA model.

Where it hooks, per model instance (nothing at class level, the attention backend is never switched):

* ``model.model.get_image_features`` is replaced by :func:`_get_image_features` (state and ``generate`` wrapper
  shared with ``families/llava.py``, so ``remove`` / ``last_trace`` / ``prepare_multimodal_inputs`` and the
  placeholder shrinking of ``generate`` work unchanged);
* while it encodes a batch, the ``forward`` of every encoder layer from the first merging layer on is replaced on
  the instance by :func:`_merging_layer_forward` (a copy of ``CLIPEncoderLayer.forward`` from transformers 5.23
  with a merge step between the attention residual and the MLP); the encoder's own layer loop and the output
  capture (``output_hidden_states``) stay as they are, and the originals are restored when the call returns.

In a merging layer the keys (and, when the method asks, the queries) come from forward hooks on the layer's own
``k_proj`` / ``q_proj`` during its attention call, so nothing is recomputed and SDPA stays on. Proportional
attention (ToMe) is an additive float mask ``log size`` on the keys, which SDPA and eager attention accept
(FlashAttention does not: applying such a method to a FlashAttention tower raises).

The [CLS] token stays at index 0, so LLaVA's ``hidden_states[-2][:, 1:]`` (the feature layer without [CLS]) are the
merged patch tokens, in the order the method leaves them (raster, or ToMe's official ``[unmerged A] + [B]``); every
image of a batch keeps the same count.
Merging stops at the feature layer (later layers cannot change the features); they run unmodified.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Any

import torch

from llava.compression.families import llava as llava_integration
from llava.compression.primitives import proportional_attention_bias
from llava.compression.registry import CompressionConfigError, MethodConfig, MethodSpec, ModelGeometry
from llava.compression.vision_encoder import EncoderTokens, LayerAttention, VisionEncoderMethod


@dataclass
class MergedImageFeatures(llava_integration.CompressedImageFeatures):
    """``get_image_features`` output under in-encoder merging; adds ``token_sizes`` (per image ``[k_i]``, how many
    original patches each output token stands for) and ``token_origins`` (per image ``[k_i]``, the raster index of
    the patch each output token started as, in output order)."""

    token_sizes: list[torch.Tensor] | None = None
    token_origins: list[torch.Tensor] | None = None


def vision_part(config: MethodConfig, geometry: ModelGeometry) -> VisionEncoderMethod:
    """The vision-encoder stage of a config: the config itself, or ``config.vision_for(geometry)`` for a
    multi-stage method (FiCoCo-VL)."""
    if isinstance(config, VisionEncoderMethod):
        return config
    part = config.vision_for(geometry) if hasattr(config, "vision_for") else None
    if isinstance(part, VisionEncoderMethod):
        return part
    raise CompressionConfigError(f"method {config.name!r} has no vision-encoder stage")


def apply(model: Any, config: MethodConfig, spec: MethodSpec) -> Any:
    """Install the in-encoder stage of ``config`` on a ``LlavaForConditionalGeneration`` (already validated).

    Replaces any method applied before. Returns ``model``.
    """
    geometry = llava_integration.model_geometry(model)
    method = vision_part(config, geometry)
    method.validate(geometry)
    tower = model.model.vision_tower
    impl = str(getattr(tower.config, "_attn_implementation", "") or "")
    if method.proportional_attention and "flash" in impl:
        raise CompressionConfigError(
            f"{config.name}: proportional attention adds a float bias to the attention logits, which "
            f"attn_implementation={impl!r} does not accept; load the vision tower with 'sdpa' or 'eager' or turn "
            "proportional attention off"
        )
    strategy = model.config.vision_feature_select_strategy
    if strategy != "default":
        raise CompressionConfigError(
            f"vision_feature_select_strategy={strategy!r}: only 'default' is supported"
        )
    llava_integration.remove(model)
    base = model.model
    saved = {
        "get_image_features": (base, base.__dict__.get("get_image_features")),
        "generate": (model, model.__dict__.get("generate")),
    }
    state = llava_integration._State(config=config, spec=spec, geometry=geometry, layers=(), saved=saved)
    base.__dict__[llava_integration.STATE_ATTR] = state
    base.get_image_features = types.MethodType(_get_image_features, base)
    model.generate = types.MethodType(llava_integration._generate, model)
    return model


def encode(
    tower: torch.nn.Module,
    pixel_values: torch.Tensor,
    method: VisionEncoderMethod,
    geometry: ModelGeometry,
    **tower_kwargs: Any,
) -> tuple[Any, EncoderTokens]:
    """Run a CLIP vision tower with ``method`` merging tokens; returns ``(tower output, EncoderTokens)``.

    ``hidden_states[geometry.vision_feature_layer]`` of the output holds the merged tokens ([CLS] first).
    """
    vfl = geometry.vision_feature_layer
    schedule = {layer: r for layer, r in method.schedule(geometry).items() if r > 0}
    tokens = EncoderTokens.start(pixel_values.shape[0], geometry.grid, device=pixel_values.device)
    output_hidden_states = tower_kwargs.pop("output_hidden_states", None) or (vfl if vfl != 0 else True)
    tower_kwargs.pop("return_dict", None)
    with _merging(tower, method, schedule, tokens):
        out = tower(pixel_values, output_hidden_states=output_hidden_states, return_dict=True, **tower_kwargs)
    return out, tokens


def encode_and_project(
    base: Any,
    pixel_values: torch.Tensor,
    method: VisionEncoderMethod,
    geometry: ModelGeometry,
    **tower_kwargs: Any,
) -> tuple[list[torch.Tensor], Any, EncoderTokens]:
    """The in-encoder stage of a ``LlavaModel`` ``base``: :func:`encode` its tower with ``method`` merging, then its
    projector on the feature layer's merged patch tokens ([CLS] dropped).

    Returns ``(per-image [k, D] features, tower output, EncoderTokens)``.
    """
    out, tokens = encode(base.vision_tower, pixel_values, method, geometry, **tower_kwargs)
    patches = out.hidden_states[geometry.vision_feature_layer][:, 1:]
    return list(base.multi_modal_projector(patches)), out, tokens


# -- internals --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _merging(
    tower: torch.nn.Module, method: VisionEncoderMethod, schedule: dict[int, int], tokens: EncoderTokens
):
    """Per-instance merging ``forward`` on the encoder layers from the first merging layer on, for one call."""
    layers = tower.encoder.layers
    if not schedule:
        yield
        return
    first = min(schedule)
    last = len(layers) - 1 if method.proportional_attention else max(schedule)
    patched = []
    try:
        for i in range(first, last + 1):
            layer = layers[i]
            previous = layer.__dict__.get("forward")
            layer.forward = types.MethodType(
                _merging_layer_forward(i, schedule.get(i, 0), method, tokens), layer
            )
            patched.append((layer, previous))
        yield
    finally:
        for layer, previous in patched:
            layer.__dict__.pop("forward", None)
            if previous is not None:
                layer.__dict__["forward"] = previous


# The one copied transformers forward left (a merge step must sit between the attention residual and the MLP,
# where no hook reaches): the sha256 of the dedented source it was copied from. A test compares it with the
# installed transformers, so an upgrade that changes CLIPEncoderLayer.forward fails loudly until it is re-synced.
COPIED_FORWARD = (
    "transformers.models.clip.modeling_clip.CLIPEncoderLayer.forward",
    "aeb5140ee0f5f4ddc3cc08831babcaf63b208009ae851d5dd54471abf16738da",
)


def _merging_layer_forward(index: int, r: int, method: VisionEncoderMethod, tokens: EncoderTokens):
    """``CLIPEncoderLayer.forward`` (transformers 5.23) with ``method.merge`` after the attention residual."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        bias = None
        if method.proportional_attention and tokens.merged_once:
            bias = proportional_attention_bias(tokens.sizes, hidden_states.dtype)
        mask = attention_mask if bias is None else (bias if attention_mask is None else attention_mask + bias)
        captured: dict[str, torch.Tensor] = {}
        handles = []
        attn = self.self_attn
        if r > 0:
            handles.append(attn.k_proj.register_forward_hook(_store(captured, "keys")))
            if method.needs_queries:
                handles.append(attn.q_proj.register_forward_hook(_store(captured, "queries")))
        try:
            hidden_states, _ = attn(hidden_states=hidden_states, attention_mask=mask, **kwargs)
        finally:
            for h in handles:
                h.remove()
        hidden_states = residual + hidden_states
        if r > 0:
            attention = LayerAttention(
                layer=index,
                queries=captured.get("queries"),
                keys=captured["keys"],
                num_heads=attn.num_heads,
                scale=attn.scale,
                bias=bias,
            )
            hidden_states = method.merge(hidden_states, attention, tokens, r)

        residual = hidden_states
        hidden_states = self.layer_norm2(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states

    return forward


def _store(into: dict[str, torch.Tensor], key: str):
    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        into[key] = output

    return hook


def _get_image_features(
    self,
    pixel_values: torch.Tensor,
    vision_feature_layer: int | list[int] | None = None,
    vision_feature_select_strategy: str | None = None,
    image_sizes: torch.Tensor | None = None,
    **kwargs: Any,
) -> MergedImageFeatures:
    """``LlavaModel.get_image_features`` with the applied method merging tokens inside the vision tower."""
    state = self.__dict__[llava_integration.STATE_ATTR]
    geometry = state.geometry
    llava_integration.check_feature_request(self, geometry, vision_feature_layer, vision_feature_select_strategy,
                                            image_sizes)
    method = vision_part(state.config, geometry)
    feats, out, tokens = encode_and_project(self, pixel_values, method, geometry, **kwargs)
    extras = method.trace_extras()
    traces = [{**tokens.trace(i), **extras} for i in range(len(feats))]
    state.last_trace = traces
    return MergedImageFeatures(
        last_hidden_state=out.last_hidden_state,
        pooler_output=feats,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
        compression_trace=traces,
        token_groups=list(tokens.groups),
        token_sizes=list(tokens.sizes[:, 1:]),
        token_origins=list(tokens.positions),
    )
