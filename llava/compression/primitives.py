"""Primitives several methods share (pure tensor functions): top-k with deterministic ties, [CLS] attention from a
layer's own queries and keys, the per-layer merge-count schedule (ToMe, FiCoCo) and proportional attention for
size-carrying merged tokens (the in-encoder family applies it for ToMe).

Conventions: scores are ``[B, N]`` (higher = more important) and converted to fp32; ties are always broken towards
the lower token index; functions that return a *set* return it sorted ascending (original raster order), functions
that return an *order* say so. Index tensors are ``torch.long``.

[CLS] attention: only the [CLS] query row is ever evaluated, so no ``N x N`` attention matrix is materialised and the
encoder keeps whatever attention backend it was loaded with (SDPA, FlashAttention, ...). ``q_cls`` is a layer's
``q_proj`` output for the [CLS] token and ``k`` the layer's ``k_proj`` output for all tokens (biases included),
exactly what the attention layer itself uses; ``B`` images, ``N`` patches, ``N + 1`` tokens with the [CLS] first,
width ``C``, ``H`` heads.

A method's own algorithm (its scoring, selection and merging, e.g. ToMe's size-weighted merge or FiCoCo's compress)
lives beside its config in ``llava.compression.methods.<method>``; only what two or more methods (or a method and a
family) use is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llava.compression.pre_llm import VisionSignals

HEAD_REDUCTIONS = ("mean", "sum", "max", "min")
# -- which tokens to keep --------------------------------------------------------------------------------------------


def rank_indices(scores: torch.Tensor) -> torch.Tensor:
    """All token indices by descending score, ties -> lower index first. ``[B, N]`` -> ``[B, N]``."""
    return torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices


def topk_in_rank_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring indices, best first (ties -> lower index). ``[B, N]`` -> ``[B, k]``."""
    check_k(k, scores.shape[-1])
    return rank_indices(scores)[..., :k]


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring indices, sorted ascending (raster order). ``[B, N]`` -> ``[B, k]``."""
    return topk_in_rank_order(scores, k).sort(dim=-1).values


def top_scoring(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest of ``[N]`` scores, ascending indices ``[k]`` (``k`` clipped to ``[0, N]``)."""
    k = max(0, min(int(k), scores.shape[-1]))
    return topk_indices(scores[None].float(), k)[0]


def first_true(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending indices of the first ``count`` ``True`` entries of a 1-D ``mask``: ``torch.nonzero(mask)[:count]``
    when ``mask`` holds at least ``count`` of them, but with a size known on the host, so it needs no device sync
    (a stable sort puts the ``True`` entries first, in order)."""
    return torch.sort((~mask).to(torch.int8), stable=True).indices[:count]


# -- [CLS] attention scores -------------------------------------------------------------------------------------------


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
    return reduce_dim(attn.float(), dim=1, how=how, choices=HEAD_REDUCTIONS)


def patch_scores(attn_row: torch.Tensor) -> torch.Tensor:
    """Drop the [CLS] column: ``[..., N+1]`` -> ``[..., N]``."""
    return attn_row[..., 1:]


def cls_patch_scores(signals: VisionSignals, layer: int, head_reduction: str = "mean") -> torch.Tensor:
    """``[B, N]`` fp32: the [CLS]->patch attention of ``layer`` reduced over heads."""
    return patch_scores(reduce_heads(signals.cls_attention(layer), head_reduction))


# -- merging ----------------------------------------------------------------------------------------------------------


def merge_schedule(
    num_tokens: int,
    num_layers: int,
    target: int | None = None,
    r: int | None = None,
    cap: Callable[[int], int] | None = None,
) -> list[int]:
    """Per-layer merge counts for ``num_layers`` consecutive merging layers that start with ``num_tokens`` tokens.

    * ``target`` only: ``num_tokens - target`` merges spread as evenly as possible, earlier layers taking the
      remainder (``ceil`` of what is left over the layers left); the result reaches ``target`` exactly.
    * ``r`` only: ``r`` per layer (each capped), the final count follows.
    * both: ``r`` per layer until ``target`` is reached; the last merging layer takes the remainder, later ones 0.

    ``cap(n)`` bounds one layer's merges given its ``n`` tokens (default ``n - 1``: keep one token).
    Raises ``ValueError`` when ``target`` cannot be reached.
    """
    if target is None and r is None:
        raise ValueError("give a target token count, a per-layer r, or both")
    cap = cap or (lambda n: n - 1)
    if target is not None and not 0 < target <= num_tokens:
        raise ValueError(f"target {target} must be in [1, {num_tokens}]")
    if r is not None and r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    n, out = num_tokens, []
    for layer in range(num_layers):
        left = num_layers - layer
        if target is None:
            want = r
        elif r is None:
            want = -(-(n - target) // left)
            # never leave more than the remaining layers can still merge (matters when caps bind, e.g. ToMe's n / 2)
            while want < min(cap(n), n - target) and _fewest(n - want, left - 1, cap) > target:
                want += 1
        else:
            want = min(r, n - target)
        step = max(0, min(want, cap(n)))
        out.append(step)
        n -= step
    if target is not None and n != target:
        raise ValueError(
            f"{num_tokens} -> {target} tokens is not reachable in {num_layers} merging layers"
            + (f" with r = {r}" if r is not None else "")
            + f" (reaches {n})"
        )
    return out


def proportional_attention_bias(sizes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ToMe's proportional attention as an additive mask: ``log s_j`` on every key ``j``.

    ``softmax(q k^T / sqrt(d) + log s)`` weights a merged token as if its ``s`` copies were all present.
    ``[B, n]`` -> ``[B, 1, 1, n]`` (broadcasts over heads and queries; SDPA and eager attention both take it).
    """
    return sizes.float().log()[:, None, None, :].to(dtype)


# -- helpers ----------------------------------------------------------------------------------------------------------


def reduce_dim(x: torch.Tensor, dim: int, how: str, choices: tuple[str, ...]) -> torch.Tensor:
    """Mean / sum / max / min of ``x`` over ``dim`` (``how`` must be one of ``choices``)."""
    if how == "mean":
        return x.mean(dim=dim)
    if how == "sum":
        return x.sum(dim=dim)
    if how == "max":
        return x.amax(dim=dim)
    if how == "min":
        return x.amin(dim=dim)
    raise ValueError(f"unknown reduction {how!r}; choose one of {choices}")


def check_k(k: int, n: int) -> None:
    """Raise ``ValueError`` unless ``0 <= k <= n`` (``k`` tokens can be selected from ``n``)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} tokens")


def _fewest(n: int, layers: int, cap) -> int:
    """Tokens left after ``layers`` layers that each merge as many as ``cap`` allows."""
    for _ in range(layers):
        n -= max(0, cap(n))
    return n

