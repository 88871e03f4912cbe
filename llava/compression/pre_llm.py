"""The ``Stage.PRE_LLM`` contract: between the vision features and the projector.

A pre-LLM method is a :class:`PreLLMMethod` config. An integration (one per model family) runs the vision
encoder, collects :class:`VisionSignals` for the layers the method names in :meth:`PreLLMMethod.probe_layers`,
calls :meth:`PreLLMMethod.reduce` and projects what comes back. Nothing here knows about a model class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from llava.compression import primitives
from llava.compression.registry import CompressionConfigError, MethodConfig, ModelGeometry


@dataclass
class VisionSignals:
    """What the vision encoder gives a reducer for a batch of ``B`` images.

    Attributes:
        tokens: ``[B, 1+N, C]`` hidden states of the feature layer (the ones LLaVA projects), [CLS] first; ``[B, N, C]``
            when the family's encoder has no [CLS] token (``has_cls=False``).
        grid: ``(rows, cols)`` of the patch grid, ``rows * cols = N``, patches in raster order.
        feature_layer: 0-based encoder layer whose output ``tokens`` is (22 for LLaVA-1.5's CLIP-L).
        num_layers: encoder layers; num_heads: attention heads per layer.
        queries: ``{layer: [B, 1, C]}`` the [CLS] row of ``q_proj``'s output for every probed layer (empty
            without a [CLS] token).
        keys: ``{layer: [B, 1+N, C]}`` ``k_proj``'s output (all tokens) for every probed layer.
        project: the model's projector, ``[..., C] -> [..., D]``.
        image_keys: one integer per image derived from its pixels (same image -> same key, whatever the batch);
            lets per-image random choices be reproducible and batch-independent.
        has_cls: whether ``tokens`` (and ``keys``) start with a [CLS] token. Methods that read the [CLS] attention
            declare ``requires={"cls"}`` in their :class:`MethodSpec` and are refused on families without one.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    feature_layer: int
    num_layers: int
    num_heads: int
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    image_keys: list[int] | None = None
    has_cls: bool = True

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_patches(self) -> int:
        return self.tokens.shape[1] - (1 if self.has_cls else 0)

    @property
    def patches(self) -> torch.Tensor:
        """``[B, N, C]`` feature-layer patch tokens ([CLS] dropped), what LLaVA would project."""
        return self.tokens[:, 1:] if self.has_cls else self.tokens

    @property
    def cls_tokens(self) -> torch.Tensor:
        """``[B, 1, C]`` the feature layer's [CLS] token; a clear error when the family has none."""
        self._require_cls()
        return self.tokens[:, :1]

    def layer_keys(self, layer: int) -> torch.Tensor:
        """``[B, 1+N, C]`` keys of ``layer`` (must be a probed layer)."""
        self._require(layer)
        return self.keys[layer]

    def cls_attention(self, layer: int) -> torch.Tensor:
        """``[B, H, 1+N]`` fp32 per-head [CLS] attention of ``layer`` (row 0 of its attention weights)."""
        self._require_cls()
        self._require(layer)
        return primitives.cls_attention(self.queries[layer], self.keys[layer], self.num_heads)

    def cls_attention_single_head(self, layer: int) -> torch.Tensor:
        """``[B, 1+N]`` fp32 full-width single-head [CLS] attention of ``layer`` (PruMerge)."""
        self._require_cls()
        self._require(layer)
        return primitives.cls_attention_single_head(self.queries[layer], self.keys[layer])

    def _require_cls(self) -> None:
        if not self.has_cls:
            raise ValueError(
                "these vision signals have no [CLS] token; a method reading it must declare requires={'cls'} in its "
                "MethodSpec so that the registry refuses it on this family"
            )

    def _require(self, layer: int) -> None:
        if layer not in self.keys or layer not in self.queries:
            raise KeyError(
                f"layer {layer} was not probed (probed: {sorted(self.keys)}); list it in probe_layers()"
            )


@dataclass
class Reduction:
    """What a reducer returns for a batch: one entry per image in every list.

    Attributes:
        features: ``[k_i, C]`` tokens for the projector (or ``[k_i, D]`` already projected, see ``projected``), in
            the order the LLM will see them.
        kept_indices: ascending patch indices (into the ``N`` grid) of the kept tokens; for merge methods the
            kept / centre tokens.
        groups: optional ``[N]`` long tensors: for every patch, the position (``0 .. k_i-1``) of the output token
            it went into, ``-1`` when it was dropped. For drawing; not part of the trace.
        info: optional extra JSON-serialisable trace fields per image.
        projected: ``True`` when ``features`` are already projector outputs.
    """

    features: list[torch.Tensor]
    kept_indices: list[torch.Tensor]
    groups: list[torch.Tensor] | None = None
    info: list[dict[str, Any]] | None = None
    projected: bool = False

    def trace(self, i: int) -> dict[str, Any]:
        """The JSON-serialisable trace of image ``i``: ``visual_tokens``, ``kept_indices`` and any extras."""
        out: dict[str, Any] = {
            "visual_tokens": int(self.features[i].shape[0]),
            "kept_indices": [int(j) for j in self.kept_indices[i].tolist()],
        }
        if self.info is not None:
            out.update(self.info[i])
        return out

    def traces(self) -> list[dict[str, Any]]:
        """:meth:`trace` of every image, reading all kept indices from the device in one copy (not one per image)."""
        sizes = [int(k.numel()) for k in self.kept_indices]
        flat = torch.cat([k.reshape(-1) for k in self.kept_indices]).tolist() if self.kept_indices else []
        traces, start = [], 0
        for i, size in enumerate(sizes):
            out: dict[str, Any] = {
                "visual_tokens": int(self.features[i].shape[0]),
                "kept_indices": [int(j) for j in flat[start : start + size]],
            }
            if self.info is not None:
                out.update(self.info[i])
            traces.append(out)
            start += size
        return traces


@dataclass(frozen=True)
class PreLLMMethod(MethodConfig):
    """Base class of the configs of ``Stage.PRE_LLM`` methods."""

    needs_image_keys: ClassVar[bool] = False

    def probe_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        """0-based encoder layers whose [CLS] query row and keys :meth:`reduce` reads."""
        return ()

    def reduce(self, signals: VisionSignals) -> Reduction:
        raise NotImplementedError


def selection_reduction(patches: torch.Tensor, indices: torch.Tensor) -> Reduction:
    """A pure selection: ``[B, N, C]`` patches, ``[B, k]`` ascending indices -> kept tokens in that order."""
    b, n, _ = patches.shape
    feats, kept, groups = [], [], []
    for i in range(b):
        idx = indices[i]
        feats.append(patches[i, idx])
        kept.append(idx)
        g = torch.full((n,), -1, dtype=torch.long, device=idx.device)
        g[idx] = torch.arange(idx.numel(), device=idx.device)
        groups.append(g)
    return Reduction(features=feats, kept_indices=kept, groups=groups)


# -- validation helpers shared by the method configs ---------------------------------------------------------


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, what: str = "") -> int:
    """``value`` must be an int (not a bool) within ``[low, high]``; raises :class:`CompressionConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CompressionConfigError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f">= {low}" if high is None else f"between {low} and {high}" if low is not None else f"<= {high}"
        )
        raise CompressionConfigError(f"{name} must be {bounds}{what}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise CompressionConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_budget(value: Any, geometry: ModelGeometry, low: int = 1) -> int:
    """A visual-token budget: an int in ``[low, num_patches]``."""
    return check_int(
        "--visual-token-num",
        value,
        low,
        geometry.num_patches,
        f" (the model gives {geometry.num_patches} patches)",
    )


def check_feature_layer(geometry: ModelGeometry, method: str) -> int:
    """The encoder layer producing the projected features; methods scoring it need it to be a real layer."""
    layer = geometry.feature_layer
    if layer < 0:
        raise CompressionConfigError(
            f"{method} scores the attention of the feature layer, but vision_feature_layer="
            f"{geometry.vision_feature_layer} selects the encoder input"
        )
    return layer
