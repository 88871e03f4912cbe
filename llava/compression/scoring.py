"""Token importance scores from a vision-encoder layer's own queries and keys (pure tensor functions).

Only the [CLS] query row is ever evaluated, so no ``N x N`` attention matrix is materialised and the encoder
keeps whatever attention backend it was loaded with (SDPA, FlashAttention, ...). Every score is fp32.

Notation: ``B`` images, ``N`` patches, ``N + 1`` tokens with the [CLS] token first, width ``C``, ``H`` heads.
``q_cls`` is a layer's ``q_proj`` output for the [CLS] token and ``k`` the layer's ``k_proj`` output for all
tokens (biases included), exactly what the attention layer itself uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

HEAD_REDUCTIONS = ("mean", "sum", "max", "min")
LAYER_ENSEMBLES = ("mean", "sum", "max", "min")


def _as_cls_row(q_cls: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` or ``[B, 1, C]`` -> ``[B, 1, C]``."""
    if q_cls.dim() == 2:
        return q_cls.unsqueeze(1)
    if q_cls.dim() != 3 or q_cls.shape[1] != 1:
        raise ValueError(f"q_cls must be [B, C] or [B, 1, C], got {tuple(q_cls.shape)}")
    return q_cls


def cls_attention(
    q_cls: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float | None = None
) -> torch.Tensor:
    """Per-head attention probabilities of the [CLS] query over all tokens.

    Args:
        q_cls: ``[B, C]`` or ``[B, 1, C]`` query of the [CLS] token.
        k: ``[B, N+1, C]`` keys of every token.
        num_heads: ``H``; ``C`` must be divisible by it (head width ``d = C / H``).
        scale: logit scale, default ``d ** -0.5`` (the CLIP attention's own scale).

    Returns:
        ``[B, H, N+1]`` fp32, ``softmax_j(q_cls,h . k_j,h * scale)``; each row sums to 1 and equals row 0 of the
        eager attention weights of that layer.
    """
    q = _as_cls_row(q_cls)
    b, n1, c = k.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by {num_heads} heads")
    d = c // num_heads
    scale = d**-0.5 if scale is None else scale
    qh = q.float().reshape(b, 1, num_heads, d).transpose(1, 2)  # [B, H, 1, d]
    kh = k.float().reshape(b, n1, num_heads, d).transpose(1, 2)  # [B, H, N+1, d]
    logits = (qh @ kh.transpose(-1, -2)).squeeze(2) * scale  # [B, H, N+1]
    return logits.softmax(dim=-1)


def cls_attention_single_head(
    q_cls: torch.Tensor, k: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """PruMerge's [CLS] attention: one head over the full width (no head split).

    Args:
        q_cls: ``[B, C]`` or ``[B, 1, C]``; k: ``[B, N+1, C]``.
        scale: default ``C ** -0.5``.

    Returns:
        ``[B, N+1]`` fp32, ``softmax_j(q_cls . k_j * scale)``.
    """
    q = _as_cls_row(q_cls).float()
    c = k.shape[-1]
    scale = c**-0.5 if scale is None else scale
    return ((q @ k.float().transpose(-1, -2)).squeeze(1) * scale).softmax(dim=-1)


def reduce_heads(attn: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """``[B, H, M]`` -> ``[B, M]`` by mean / sum / max / min over heads (fp32)."""
    return _reduce(attn.float(), dim=1, how=how, choices=HEAD_REDUCTIONS)


def patch_scores(attn_row: torch.Tensor) -> torch.Tensor:
    """Drop the [CLS] column: ``[..., N+1]`` -> ``[..., N]``."""
    return attn_row[..., 1:]


def ensemble_layers(scores: Sequence[torch.Tensor] | torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Combine per-layer scores: ``L x [B, N]`` (or stacked ``[L, B, N]``) -> ``[B, N]`` fp32.

    ``mean`` and ``sum`` rank tokens identically; ``max`` / ``min`` are VTC-CLS's alternatives.
    """
    stacked = scores if isinstance(scores, torch.Tensor) else torch.stack(list(scores))
    if stacked.shape[0] == 0:
        raise ValueError("ensemble of zero layers")
    return _reduce(stacked.float(), dim=0, how=how, choices=LAYER_ENSEMBLES)


def mean_over_heads_of_keys(k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """VisionZip's similarity metric: keys averaged over heads, ``[B, M, C]`` -> ``[B, M, C/H]`` (fp32)."""
    b, m, c = k.shape
    return k.float().reshape(b, m, num_heads, c // num_heads).mean(dim=2)


def _reduce(x: torch.Tensor, dim: int, how: str, choices: tuple[str, ...]) -> torch.Tensor:
    if how == "mean":
        return x.mean(dim=dim)
    if how == "sum":
        return x.sum(dim=dim)
    if how == "max":
        return x.amax(dim=dim)
    if how == "min":
        return x.amin(dim=dim)
    raise ValueError(f"unknown reduction {how!r}; choose one of {choices}")
