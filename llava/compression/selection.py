"""Which tokens to keep (pure tensor functions).

Conventions: scores are ``[B, N]`` (higher = more important) and converted to fp32; ties are always broken
towards the lower token index; functions that return a *set* return it sorted ascending (original raster
order), functions that return an *order* say so. Index tensors are ``torch.long``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rank_indices(scores: torch.Tensor) -> torch.Tensor:
    """All token indices by descending score, ties -> lower index first. ``[B, N]`` -> ``[B, N]``."""
    return torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices


def topk_in_rank_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring indices, best first (ties -> lower index). ``[B, N]`` -> ``[B, k]``."""
    _check_k(k, scores.shape[-1])
    return rank_indices(scores)[..., :k]


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring indices, sorted ascending (raster order). ``[B, N]`` -> ``[B, k]``."""
    return topk_in_rank_order(scores, k).sort(dim=-1).values


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[b, indices[b]]``: ``[B, N, C]``, ``[B, k]`` -> ``[B, k, C]``."""
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def iqr_outlier_count(scores: torch.Tensor) -> int:
    """PruMerge's adaptive budget for one image: how many scores lie above ``Q3 + 1.5 (Q3 - Q1)``.

    ``scores`` is ``[N]``; quartiles use linear interpolation (``numpy.percentile``'s default). The outliers
    are exactly the top-``count`` tokens, so ``topk_in_rank_order(scores, count)`` selects them.
    """
    s = scores.float().flatten()
    q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype, device=s.device))
    return int((s > q3 + 1.5 * (q3 - q1)).sum())


def strided_indices(stop: int, stride: int) -> torch.Tensor:
    """``0, stride, 2*stride, ... < stop`` (PruMerge+'s spatially uniform tokens). Returns ``[m]``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return torch.arange(0, stop, stride, dtype=torch.long)


def append_unique(first: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``first`` followed by the entries of ``extra`` not already in ``first`` (both ``[m]``, order kept)."""
    seen = torch.isin(extra, first)
    return torch.cat([first, extra[~seen]])


def uniform_fill(n: int, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` indices spread evenly over the raster order of ``range(n)`` minus ``exclude``; ascending ``[k]``.

    With ``M`` candidates (ascending) it takes candidate ``floor((i + 0.5) * M / k)`` for ``i < k``, so the picks
    are distinct, deterministic and as evenly spaced as the candidates allow.
    """
    candidates = torch.arange(n, dtype=torch.long)
    if exclude is not None and exclude.numel():
        candidates = candidates[~torch.isin(candidates, exclude.to(torch.long).cpu())]
    m = candidates.numel()
    _check_k(k, m)
    if k == 0:
        return candidates[:0]
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) * m / k).floor().to(torch.long).clamp_(max=m - 1)
    return candidates[pos]


def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_i, x_j)`` in fp32: ``[N, C]`` -> ``[N, N]``."""
    xn = F.normalize(x.float(), dim=-1)
    return 1.0 - xn @ xn.T


def max_min_diversity(distance: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy max-min diverse subset, in pick order: ``[N, N]`` distances -> ``[k]`` indices.

    First pick: the token whose nearest other token is farthest (``argmax_j min_{i != j} D_ij``). Then repeatedly
    the token farthest from the picked set (``argmax_j min_{i in S} D_ij``). Picked tokens are never picked again
    (the reference can re-pick one when every remaining distance is 0); ties -> lower index.
    """
    n = distance.shape[-1]
    _check_k(k, n)
    d = distance.float()
    picks = torch.empty(k, dtype=torch.long, device=d.device)
    if k == 0:
        return picks
    off_diag = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf"))
    nearest = off_diag.amin(dim=0) if n > 1 else torch.zeros(1, device=d.device)
    first = int(torch.argmax(nearest))
    picks[0] = first
    score = d[first].clone()
    taken = torch.zeros(n, dtype=torch.bool, device=d.device)
    taken[first] = True
    for i in range(1, k):
        j = int(torch.argmax(score.masked_fill(taken, float("-inf"))))
        picks[i] = j
        taken[j] = True
        score = torch.minimum(score, d[j])
    return picks


def random_indices(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices drawn uniformly from ``range(n)`` with ``generator``; ascending ``[k]``."""
    _check_k(k, n)
    return torch.randperm(n, generator=generator)[:k].sort().values


def _check_k(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} tokens")
