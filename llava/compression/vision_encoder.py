"""The ``Stage.VISION_ENCODER`` contract: token merging between the attention and the MLP of encoder layers.

A vision-encoder method is a :class:`VisionEncoderMethod` config. An integration (one per encoder family, e.g.
``llava.compression.families.clip_merging``) runs the encoder and, in every layer of :meth:`schedule` with
``r > 0``, calls :meth:`VisionEncoderMethod.merge` on the hidden states right after the attention residual. The
method reduces the ``1 + n`` tokens ([CLS] first) to ``1 + n - r`` and records what it did in the batch's
:class:`EncoderTokens`. Nothing here knows about a model class.

Guarantees every method keeps: the [CLS] token stays at index 0, every image of the batch loses the same number of
tokens (tensors stay rectangular), and :class:`EncoderTokens` tracks each token's size (patches it stands for), its
raster position and, for every original patch, the token it went into. Patch tokens stay in raster (sequence)
order unless the method says otherwise (ToMe's default ``official`` order is ``[unmerged A] + [B]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from llava.compression.registry import MethodConfig, ModelGeometry


@dataclass
class EncoderTokens:
    """Book-keeping for ``B`` images carried through the encoder.

    Attributes:
        sizes: ``[B, 1+n]`` fp32, how many original patches each token stands for ([CLS] = 1).
        positions: ``[B, n]`` raster index (in the original grid) of the patch each current patch token started as,
            in the current token order.
        groups: ``[B, N]`` for every original patch, the index (``0 .. n-1``) of the current patch token holding
            most of it.
        grid: ``(rows, cols)`` of the original patch grid.
        layers / merged / counts: per merging layer, its index, the merges done and the patch tokens left.
        extras: method-specific per-layer lists (e.g. FiCoCo's mean number of targets per source).
        merged_once: whether any merge happened yet (proportional attention has no effect before).
    """

    sizes: torch.Tensor
    positions: torch.Tensor
    groups: torch.Tensor
    grid: tuple[int, int]
    layers: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    extras: dict[str, list[Any]] = field(default_factory=dict)
    merged_once: bool = False

    @classmethod
    def start(cls, batch: int, grid: tuple[int, int], device: torch.device | None = None) -> EncoderTokens:
        n = grid[0] * grid[1]
        ar = torch.arange(n, device=device)
        return cls(
            sizes=torch.ones(batch, 1 + n, device=device),
            positions=ar.expand(batch, n).clone(),
            groups=ar.expand(batch, n).clone(),
            grid=grid,
        )

    @property
    def num_patches(self) -> int:
        return self.positions.shape[1]

    def update(
        self,
        layer: int,
        sources: torch.Tensor,
        preserved: torch.Tensor,
        absorbed_by: torch.Tensor,
        patch_sizes: torch.Tensor,
        **extras: Any,
    ) -> None:
        """Record one merge step, in patch-index space (``0 .. n-1``, [CLS] excluded).

        Args:
            sources: ``[B, r]`` patches merged away; preserved: ``[B, n - r]`` survivors in their new order
                (ascending for methods that keep raster order);
            absorbed_by: ``[B, r]`` the survivor (patch index) that took most of each source;
            patch_sizes: ``[B, n - r]`` the survivors' new sizes.
        """
        b, n = self.positions.shape
        dev = self.positions.device
        new_index = torch.empty(b, n, dtype=torch.long, device=dev)
        new_index.scatter_(1, preserved, torch.arange(preserved.shape[1], device=dev).expand_as(preserved))
        new_index.scatter_(1, sources, torch.gather(new_index, 1, absorbed_by))
        self.groups = torch.gather(new_index, 1, self.groups)
        self.positions = torch.gather(self.positions, 1, preserved)
        self.sizes = torch.cat([self.sizes[:, :1], patch_sizes.to(self.sizes.dtype)], dim=1)
        self.layers.append(layer)
        self.merged.append(int(sources.shape[1]))
        self.counts.append(int(preserved.shape[1]))
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value)
        self.merged_once = self.merged_once or sources.shape[1] > 0

    def trace(self, i: int) -> dict[str, Any]:
        """The JSON-serialisable trace of image ``i`` (``visual_tokens`` is the patch count at the feature layer;
        ``kept_indices`` the ascending raster indices of the patches the current tokens started as, whatever their
        order)."""
        out: dict[str, Any] = {
            "visual_tokens": self.num_patches,
            "kept_indices": sorted(int(p) for p in self.positions[i].tolist()),
            "vision_merge_layers": list(self.layers),
            "vision_merges_per_layer": list(self.merged),
            "vision_tokens_per_layer": list(self.counts),
            "max_token_size": round(float(self.sizes[i, 1:].max().detach()), 4),
        }
        for key, values in self.extras.items():
            out[key] = [v[i] if isinstance(v, list) else v for v in values]
        return out


@dataclass
class LayerAttention:
    """What one encoder layer's attention gives a merge step.

    queries / keys: ``[B, 1+n, C]`` outputs of the layer's ``q_proj`` / ``k_proj`` (``None`` when the method did
    not ask for them); num_heads; scale: the logit scale; bias: the additive mask the attention used
    (``[B, 1, 1, 1+n]``, ToMe's ``log size``) or ``None``.
    """

    layer: int
    queries: torch.Tensor | None
    keys: torch.Tensor | None
    num_heads: int
    scale: float
    bias: torch.Tensor | None = None


@dataclass(frozen=True)
class VisionEncoderMethod(MethodConfig):
    """Base class of the configs of ``Stage.VISION_ENCODER`` methods."""

    needs_queries: ClassVar[bool] = (
        False  # the merge step reads the layer's queries (keys are always captured)
    )

    @property
    def proportional_attention(self) -> bool:
        """Add ``log size`` to the attention logits of every layer after the first merge (ToMe)."""
        return False

    def schedule(self, geometry: ModelGeometry) -> dict[int, int]:
        """``{encoder layer: merges}`` (0-based layers, at most the feature layer); validated by :meth:`validate`."""
        raise NotImplementedError

    def encoder_token_schedule(self, geometry: ModelGeometry) -> list[tuple[int, int]]:
        """Per encoder layer of one image, ``(tokens entering the attention, tokens entering the MLP)``, the [CLS]
        included: merges happen between a layer's attention and its MLP (from :meth:`schedule`)."""
        merges = self.schedule(geometry)
        tokens, out = geometry.num_patches + 1, []
        for layer in range(geometry.vision_layers):
            r = int(merges.get(layer, 0))
            out.append((tokens, tokens - r))
            tokens -= r
        return out

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the patches out of the feature layer."""
        merges = self.schedule(geometry)
        patches = geometry.num_patches - sum(r for layer, r in merges.items() if layer <= geometry.feature_layer)
        return [patches] * geometry.llm_layers

    def merge(
        self, x: torch.Tensor, attention: LayerAttention, tokens: EncoderTokens, r: int
    ) -> torch.Tensor:
        """``[B, 1+n, C]`` hidden states after the layer's attention residual -> ``[B, 1+n-r, C]``; updates ``tokens``."""
        raise NotImplementedError

    def trace_extras(self) -> dict[str, Any]:
        """Extra trace fields shared by every image (e.g. the schedule's parameters)."""
        return {}
