"""The Video-LLaVA family: token compression per model instance, pre-LLM methods frame by frame, in-LLM methods on
the whole video. Registered (:data:`FAMILY`) on import of ``videollava.model`` and declared in the
``vtc_toolkit.families`` entry-point group, so ``llava.compression.apply(video_model, method, budget_mode=...,
keep_cls=...)`` reaches it without ``llava`` importing ``videollava``.

**Pre-LLM methods** (``Stage.PRE_LLM``: FasterVLM, VTC-CLS, VisionZip, PruMerge(+), DivPrune, random, pool). Every
frame of a video is one image to the method: the video tower runs once on the ``B*T`` frames, forward hooks on the
feature layer's spatial ``self_attn.q_proj`` / ``k_proj`` give each frame's [CLS] query row and keys (works with the
port's plain tower and with the LanguageBind tower, whose temporal attention is not hooked), and the method's
``reduce`` sees the ``B*T`` frames as a batch of images. As FasterVLM's ``video`` branch (seed_methods.md 2.3),
tokens are chosen *before* the projector; frames stay in temporal order and each frame's kept tokens in raster
order. Budget modes:

``per-frame`` (default)
    The method's budget applies to each frame: ``fastervlm --visual-token-num L`` keeps ``L`` patches of every frame,
    ``8 L`` in total (FasterVLM's video setting: 64 -> 512 tokens, "75 %").
``global``
    One budget over all frames of a video: the same total ``T * L`` tokens, the top ``T * L`` of the ``T * N`` patch
    scores of the whole video (each frame's [CLS] attention is a distribution over its own patches, so scores are
    comparable across frames); frames may keep different counts, including none. Implemented for ``fastervlm``.

[CLS]: the unpruned Video-LLaVA feeds each frame's [CLS] token (257 per frame); FasterVLM's video branch drops it
(256 per frame, ``8 L`` after pruning). ``keep_cls=False`` (default) follows FasterVLM; ``keep_cls=True`` puts each
frame's [CLS] before its kept patches (``8 (L + 1)``; ``--visual-token-num 256`` with ``keep_cls`` is exactly the
unpruned model). The choice is in every trace.

:meth:`VideoLlavaFamily.apply` replaces ``model.model.get_video_features`` on the instance (nothing at class level). Its output's
``pooler_output`` is a tensor as the port requires: ``[B*T, k, D]`` when every frame keeps ``k`` tokens, else
``[1, sum k, D]``; ``features_per_video`` lists each video's ``[n_v, D]`` tokens and ``compression_trace`` one dict per
video (``visual_tokens``, ``tokens_per_frame``, ``keep_cls``, ``budget_mode``, ``kept_indices`` per frame, method
extras per frame). Prompts must carry the kept counts of placeholders: build them with
:class:`videollava.model.generation.VideoLlavaGenerator` (or from the trace's ``tokens_per_frame``).

**In-LLM methods** (``Stage.LLM`` only: FastV, PyramidDrop, SparseVLM, DART, FiCoCo-L) run on the whole video as one
visual span: the decoder engine of :mod:`llava.compression.families.decoder_pruning` is attached to the language
model with the ``<video>`` id as the visual token, and a forward pre-hook on ``model.model`` marks the ``<video>``
positions of each prefill. All 2,056 visual tokens (8 x 257, [CLS] included) enter the LLM; the method's budget is
per *video* (FastV ``--visual-token-num 512`` keeps 512 of them after layer K, as FasterVLM's FastV video rows).
:func:`llm_trace` gives the per-row trace (``visual_tokens_per_layer``, ``avg_visual_tokens``).

Methods acting inside the vision encoder (ToMe, FiCoCo-V, FiCoCo-VL) are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import VideoLlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.compression.families import register_family
from llava.compression.families.contract import Family
from llava.compression.families.llava import tower_signals
from llava.compression.methods.fastervlm import FasterVLMConfig, cls_patch_scores
from llava.compression.placeholders import shrink_placeholder_runs
from llava.compression.pre_llm import PreLLMMethod, VisionSignals
from llava.compression.primitives import topk_indices
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    NoCompression,
    Stage,
    get_method,
    make_config,
)

FAMILY_NAME = "video-llava"
BUDGET_MODES = ("per-frame", "global")
STATE_ATTR = "_vtc_video_compression_state"
DEFAULT_NUM_FRAMES = 8


@dataclass
class CompressedVideoFeatures(BaseModelOutputWithPooling):
    """``get_video_features`` output under compression (see the module docstring)."""

    features_per_video: list[torch.Tensor] | None = None
    compression_trace: list[dict[str, Any]] | None = None


@dataclass
class VideoCompressionState:
    config: MethodConfig
    stage: str  # "pre_llm" or "llm"
    geometry: ModelGeometry
    num_frames: int
    budget_mode: str | None
    keep_cls: bool
    saved: Any = None  # a previous instance attribute ``get_video_features`` (normally None)
    last_trace: list[dict[str, Any]] | None = None


def video_model_geometry(model: Any) -> ModelGeometry:
    """Per-frame geometry of a Video-LLaVA model (patches of one frame; feature layer; layer counts)."""
    cfg = model.config
    vc = cfg.vision_config
    side = vc.image_size // vc.patch_size
    vfl = cfg.vision_feature_layer
    if not isinstance(vfl, int):
        raise CompressionConfigError(f"vision_feature_layer={vfl!r}: only a single feature layer is supported")
    return ModelGeometry(num_patches=side * side, grid=(side, side), vision_layers=vc.num_hidden_layers,
                         llm_layers=cfg.text_config.num_hidden_layers, vision_feature_layer=vfl, has_cls=True,
                         family=FAMILY_NAME)


def _is_llm_method(spec: MethodSpec) -> bool:
    from llava.compression.llm.base import LLMPruningMethod

    return spec.stages == (Stage.LLM,) and issubclass(spec.config_cls, LLMPruningMethod)


def method_geometry(spec: MethodSpec, per_frame: ModelGeometry, num_frames: int = DEFAULT_NUM_FRAMES) -> ModelGeometry:
    """The geometry a method validates against: per frame for pre-LLM methods; for in-LLM methods the visual
    tokens of one video in the LLM (``T * (N + 1)``, every frame's [CLS] included)."""
    if _is_llm_method(spec):
        return dataclasses.replace(per_frame, num_patches=num_frames * (per_frame.num_patches + 1))
    return per_frame


def check_video_method(name: str, budget_mode: str | None = None, keep_cls: bool | None = None) -> MethodSpec:
    """The registry spec of ``name`` if it works on video with these options, else :class:`CompressionConfigError`."""
    if budget_mode is not None and budget_mode not in BUDGET_MODES:
        raise CompressionConfigError(f"--budget-mode must be one of {', '.join(BUDGET_MODES)}, got {budget_mode!r}")
    spec = get_method(name)
    if spec.config_cls is NoCompression:
        if budget_mode is not None or keep_cls is not None:
            raise CompressionConfigError("--budget-mode / --keep-cls only apply with a compression --method")
        return spec
    if _is_llm_method(spec):
        if budget_mode not in (None, "per-frame") or keep_cls:
            raise CompressionConfigError(
                f"--budget-mode / --keep-cls apply to pre-LLM methods; {spec.name!r} prunes inside the LLM, where "
                "every frame's [CLS] is present and its budget is per video"
            )
        return spec
    if not issubclass(spec.config_cls, PreLLMMethod) or any(s is not Stage.PRE_LLM for s in spec.stages):
        raise CompressionConfigError(
            f"method {spec.name!r} acts at stage(s) {[s.value for s in spec.stages]}; on Video-LLaVA only pre-LLM "
            "methods (between the video tower and the projector) and in-LLM methods are integrated so far"
        )
    if budget_mode == "global" and not issubclass(spec.config_cls, FasterVLMConfig):
        raise CompressionConfigError(
            f"--budget-mode global is implemented for fastervlm only (method {spec.name!r} is per frame)"
        )
    return spec


def build_video_config(
    method: str | MethodConfig,
    geometry: ModelGeometry,
    budget_mode: str | None = None,
    keep_cls: bool | None = None,
    num_frames: int = DEFAULT_NUM_FRAMES,
    **kwargs: Any,
) -> MethodConfig:
    """A validated config of a method that works on video (:func:`check_video_method`); ``geometry`` is per frame."""
    if isinstance(method, MethodConfig) and kwargs:
        raise CompressionConfigError("pass either a method config or a method name with arguments, not both")
    spec = check_video_method(method.name if isinstance(method, MethodConfig) else method, budget_mode, keep_cls)
    if spec.config_cls is NoCompression:
        return method if isinstance(method, MethodConfig) else make_config(method, None, **kwargs)
    geometry = method_geometry(spec, geometry, num_frames)
    if isinstance(method, MethodConfig):
        method.validate(geometry)
        return method
    return make_config(method, geometry, **kwargs)


def _apply(
    model: VideoLlavaForConditionalGeneration,
    method: str | MethodConfig,
    budget_mode: str | None = None,
    keep_cls: bool | None = None,
    **method_kwargs: Any,
) -> VideoLlavaForConditionalGeneration:
    """Compress ``model``'s video tokens with ``method`` (name + arguments, or a config); ``"none"`` removes it.

    Reached through ``llava.compression.apply(model, method, budget_mode=..., keep_cls=..., **arguments)``.

    ``budget_mode`` (``per-frame`` when not given) and ``keep_cls`` (``False`` when not given) apply to pre-LLM
    methods only.
    """
    if not isinstance(model, VideoLlavaForConditionalGeneration):
        raise TypeError(f"video compression handles VideoLlavaForConditionalGeneration, not {type(model).__name__}")
    num_frames = _num_frames(model)
    config = build_video_config(method, video_model_geometry(model), budget_mode, keep_cls, num_frames,
                                **method_kwargs)
    _remove(model)
    if isinstance(config, NoCompression):
        return model
    spec = get_method(config.name)
    base = model.model
    geometry = method_geometry(spec, video_model_geometry(model), num_frames)
    if _is_llm_method(spec):
        from llava.compression.families import decoder_pruning

        engine = decoder_pruning.attach(base.language_model, config, geometry, image_token_id=model.config.video_token_id)
        decoder_pruning.mark_visual_tokens(engine, base)  # the <video> positions, passed down as visual_mask
        state = VideoCompressionState(config, "llm", geometry, num_frames, None, True)
    else:
        state = VideoCompressionState(config, "pre_llm", geometry, num_frames, budget_mode or "per-frame",
                                      bool(keep_cls), saved=base.__dict__.get("get_video_features"))
        base.get_video_features = types.MethodType(_get_video_features, base)
    base.__dict__[STATE_ATTR] = state
    return model


def _remove(model: Any) -> Any:
    """Undo :func:`_apply` (no-op when nothing is applied); returns ``model``."""
    base = getattr(model, "model", None)
    state = base.__dict__.get(STATE_ATTR) if isinstance(base, torch.nn.Module) else None
    if state is None:
        return model
    if state.stage == "llm":
        from llava.compression.families import decoder_pruning

        decoder_pruning.detach(base.language_model)  # also removes the pre-hook (kept in the engine's handles)
    else:
        base.__dict__.pop("get_video_features", None)
        if state.saved is not None:
            base.__dict__["get_video_features"] = state.saved
    del base.__dict__[STATE_ATTR]
    return model


def applied_state(model: Any) -> VideoCompressionState | None:
    base = getattr(model, "model", model)
    return base.__dict__.get(STATE_ATTR) if isinstance(base, torch.nn.Module) else None


def _describe(model: Any) -> dict[str, Any]:
    """``{"method", "method_args", "stage", "budget_mode", "keep_cls"}`` of what is applied (``none`` when nothing)."""
    state = applied_state(model)
    if state is None:
        return {"method": "none", "method_args": {}, "stage": None, "budget_mode": None, "keep_cls": True}
    return {"method": state.config.name, "method_args": state.config.to_dict(), "stage": state.stage,
            "budget_mode": state.budget_mode, "keep_cls": state.keep_cls}


def llm_trace(model: Any, batch_size: int) -> list[dict[str, Any]] | None:
    """The in-LLM method's per-row trace of the last prefill (one dict per input row), or ``None``."""
    state = applied_state(model)
    if state is None or state.stage != "llm":
        return None
    from llava.compression.families import decoder_pruning

    trace = decoder_pruning.last_trace(model)
    if not trace or len(trace) % batch_size:
        return None
    return [dict(t) for t in trace[:: len(trace) // batch_size]]  # beams / return sequences collapsed


def _num_frames(model: Any) -> int:
    tower_frames = getattr(model.model.video_tower, "num_frames", None)
    return int(tower_frames or getattr(model.config, "video_num_frames", None) or DEFAULT_NUM_FRAMES)


# -- internals ---------------------------------------------------------------------------------------------------


def collect_frame_signals(model_base: Any, frames: torch.Tensor, layers: tuple[int, ...], geometry: ModelGeometry,
                          with_keys: bool = False) -> VisionSignals:
    """Run the video tower on ``[B*T, C, H, W]`` frames; :class:`VisionSignals` with one "image" per frame."""
    signals, _ = tower_signals(model_base.video_tower, frames, layers, geometry,  # spatial attention of each frame
                               model_base.multi_modal_projector, with_image_keys=with_keys)
    return signals


def _per_frame(state: VideoCompressionState, signals: VisionSignals):
    """Per-frame method output: lists over frames of (features, projected?, kept indices, info)."""
    reduction = state.config.reduce(signals)
    n = len(reduction.features)
    infos = reduction.info or [{} for _ in range(n)]
    return reduction.features, reduction.projected, reduction.kept_indices, infos


def _global(state: VideoCompressionState, signals: VisionSignals, num_videos: int):
    config: FasterVLMConfig = state.config  # type: ignore[assignment]
    scores = cls_patch_scores(signals, signals.feature_layer, config.head_reduction)  # [B*T, N]
    t, n = state.num_frames, signals.num_patches
    picks = topk_indices(scores.reshape(num_videos, t * n), config.visual_token_num * t)  # ascending
    feats, kept = [], []
    patches = signals.patches
    for v in range(num_videos):
        frame_of, patch_of = picks[v] // n, picks[v] % n
        for f in range(t):
            idx = patch_of[frame_of == f]
            feats.append(patches[v * t + f, idx])
            kept.append(idx)
    return feats, False, kept, [{} for _ in feats]


def _get_video_features(self, pixel_values_videos: torch.Tensor, vision_feature_layer: Any = None, **kwargs: Any):
    """``VideoLlavaModel.get_video_features`` with the applied method between the video tower and the projector."""
    state: VideoCompressionState = self.__dict__[STATE_ATTR]
    if vision_feature_layer is not None and vision_feature_layer != state.geometry.vision_feature_layer:
        raise ValueError(f"compression was applied for vision_feature_layer={state.geometry.vision_feature_layer}, "
                         f"got {vision_feature_layer!r}")
    b, t, c, h, w = pixel_values_videos.shape
    if t != state.num_frames:
        raise ValueError(f"the video tower takes {state.num_frames} frames per video, got {t}")
    frames = pixel_values_videos.reshape(b * t, c, h, w)
    signals = collect_frame_signals(self, frames, tuple(sorted(set(state.config.probe_layers(state.geometry)))),
                                    state.geometry, with_keys=state.config.needs_image_keys)
    if state.budget_mode == "global":
        feats, projected, kept, infos = _global(state, signals, b)
    else:
        feats, projected, kept, infos = _per_frame(state, signals)
    cls_tokens = signals.tokens[:, :1]
    if state.keep_cls:
        cls_in = [bool(info.get("cls_token")) for info in infos]  # a method that already keeps it (VisionZip)
        if projected:
            cls_tokens = self.multi_modal_projector(cls_tokens)
        feats = [f if has else torch.cat([cls_tokens[i], f]) for i, (f, has) in enumerate(zip(feats, cls_in))]
    counts = [int(f.shape[0]) for f in feats]
    if projected:
        per_frame = feats
    else:
        per_frame = list(torch.split(self.multi_modal_projector(torch.cat(feats)), counts))
    videos = [torch.cat(per_frame[v * t : (v + 1) * t]) for v in range(b)]
    traces = []
    for v in range(b):
        frames_v = range(v * t, (v + 1) * t)
        trace: dict[str, Any] = {
            "visual_tokens": int(videos[v].shape[0]),
            "tokens_per_frame": [counts[i] for i in frames_v],
            "keep_cls": state.keep_cls,
            "budget_mode": state.budget_mode,
            "kept_indices": [[int(j) for j in kept[i].tolist()] for i in frames_v],
        }
        extras = [infos[i] for i in frames_v]
        if any(extras):
            trace["frame_info"] = extras
        traces.append(trace)
    state.last_trace = traces
    if len(set(counts)) == 1:
        pooled = torch.stack(per_frame)  # [B*T, k, D]
    else:
        pooled = torch.cat(per_frame).unsqueeze(0)  # [1, sum k, D]
    return CompressedVideoFeatures(pooler_output=pooled, features_per_video=videos, compression_trace=traces)


def tokens_per_frame(trace: dict[str, Any]) -> list[int]:
    return list(trace["tokens_per_frame"])


class VideoLlavaFamily(Family):
    """Video-LLaVA: a video = 8 frames, each a 16x16 grid with a [CLS] token; 1-D positions; Llama decoder.

    Family options of :meth:`apply`: ``budget_mode`` (``per-frame`` / ``global``) and ``keep_cls`` (pre-LLM methods).
    In-encoder methods (ToMe, FiCoCo-V/VL) are not integrated on the video tower.
    """

    name = FAMILY_NAME
    stages = (Stage.PRE_LLM, Stage.LLM)
    provides = frozenset({"cls"})

    def supports(self, model: Any) -> bool:
        return isinstance(model, VideoLlavaForConditionalGeneration)

    def refusal(self, spec: MethodSpec) -> str | None:
        if any(s not in self.stages for s in spec.stages):
            return (f"method {spec.name!r} acts at stage(s) {[s.value for s in spec.stages]}; on Video-LLaVA only "
                    "pre-LLM methods (between the video tower and the projector) and in-LLM methods are integrated "
                    "so far")
        return super().refusal(spec)

    def geometry(self, model: Any) -> ModelGeometry:
        """Per-frame geometry (what pre-LLM methods validate against; in-LLM methods see the whole video)."""
        return video_model_geometry(model)

    def unit_geometries(self, model: Any, pixel_values_videos: torch.Tensor | None = None, **inputs: Any):
        """One (identical) geometry per frame of ``pixel_values_videos`` (``[B, T, 3, H, W]``)."""
        geometry = video_model_geometry(model)
        return [] if pixel_values_videos is None else [geometry] * int(pixel_values_videos.shape[0] * pixel_values_videos.shape[1])

    def build_config(self, model: Any, method: str | MethodConfig, budget_mode: str | None = None,
                     keep_cls: bool | None = None, **arguments: Any) -> MethodConfig:
        return build_video_config(method, video_model_geometry(model), budget_mode, keep_cls, _num_frames(model),
                                  **arguments)

    def collect_vision_signals(self, model: Any, pixel_values: torch.Tensor, layers: tuple[int, ...] = (),
                               with_image_keys: bool = False, **options: Any):
        """Signals of ``[B*T, 3, H, W]`` frames (one "image" per frame); ``(signals, None)``."""
        return collect_frame_signals(model.model, pixel_values, tuple(layers), video_model_geometry(model),
                                     with_keys=with_image_keys), None

    def shrink_placeholders(self, model, input_ids, attention_mask, counts, pad_token_id=None):
        """Shrink each video's ``<video>`` run (``T * (N + 1)`` ids) to ``counts[v]`` (the sum of its frames)."""
        per_frame = video_model_geometry(model).num_patches + 1
        pad = pad_token_id if pad_token_id is not None else (model.config.text_config.pad_token_id or 0)
        return shrink_placeholder_runs(input_ids, attention_mask, model.config.video_token_id, counts, int(pad),
                                       tokens_per_image=_num_frames(model) * per_frame)

    def language_model(self, model: Any) -> Any:
        return model.model.language_model

    def visual_token_id(self, model: Any) -> int:
        return int(model.config.video_token_id)

    def apply(self, model: Any, method: str | MethodConfig, budget_mode: str | None = None,
              keep_cls: bool | None = None, **arguments: Any) -> Any:
        return _apply(model, method, budget_mode=budget_mode, keep_cls=keep_cls, **arguments)

    def remove(self, model: Any) -> Any:
        return _remove(model)

    def applied_config(self, model: Any) -> MethodConfig:
        state = applied_state(model)
        return NoCompression() if state is None else state.config

    def last_trace(self, model: Any) -> list[dict[str, Any]] | None:
        """Per-video traces of the last encoding (pre-LLM methods) or the engine's per-row trace (in-LLM ones)."""
        state = applied_state(model)
        if state is None:
            return None
        if state.stage == "llm":
            from llava.compression.families import decoder_pruning

            return decoder_pruning.last_trace(model)
        return state.last_trace

    def describe(self, model: Any) -> dict[str, Any]:
        """``{"method", "method_args", "stage", "budget_mode", "keep_cls"}`` (``none`` when nothing is applied)."""
        return _describe(model)

    def model_geometry(self, model: Any) -> ModelGeometry:
        return video_model_geometry(model)


FAMILY = register_family(VideoLlavaFamily())
