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


def cosine_distance_fp16(x: torch.Tensor) -> torch.Tensor:
    """DivPrune's upstream distance matrix, computed as its fp16 GPU run does: ``[N, C]`` -> ``[N, N]`` fp16.

    Upstream (``pairwise_cosine_similarity`` on the fp16 LLM input embeddings) divides every row by its norm, takes
    ``torch.mm`` of the result with its transpose and subtracts it from 1, each step in fp16. Emulated here step by
    step so that CPU and GPU agree: the row norm is accumulated in fp32 and rounded to fp16 (what PyTorch's fp16
    ``norm`` does), the division is rounded to fp16, the matrix product multiplies the fp16 entries exactly and
    accumulates in fp32 before one rounding to fp16 (a cuBLAS fp16 GEMM with fp32 accumulation; only the summation
    order can differ), and ``1 - s`` is rounded to fp16. Values are exact fp16 numbers, so many entries tie.
    """
    half = x.to(torch.float16)
    norm = half.float().norm(dim=-1, keepdim=True).to(torch.float16)
    unit = (half.float() / norm.float()).to(torch.float16)
    similarity = (unit.float() @ unit.float().T).to(torch.float16)
    return (1.0 - similarity.float()).to(torch.float16)


FIRST_PICK_RULES = ("nearest-other", "second-smallest")


def max_min_diversity(distance: torch.Tensor, k: int, first_pick: str = "nearest-other") -> torch.Tensor:
    """DivPrune's greedy max-min diverse subset, in pick order: ``[N, N]`` distances -> ``[k]`` indices.

    First pick: the token whose nearest other token is farthest (``argmax_j min_{i != j} D_ij``); with
    ``first_pick="second-smallest"`` upstream's literal rule, the second-smallest entry of each column with the
    diagonal included (the same unless a diagonal entry is not the column's smallest, which happens with rounded
    fp16 distances). Then repeatedly the token farthest from the picked set (``argmax_j min_{i in S} D_ij``). Picked
    tokens are never picked again (the reference can re-pick one when no remaining token is farther from the set
    than a picked token's own rounded diagonal entry); ties -> lower index. Comparisons run on the values as given
    (fp16 distances compare as fp16 numbers).
    """
    if first_pick not in FIRST_PICK_RULES:
        raise ValueError(f"first_pick must be one of {', '.join(FIRST_PICK_RULES)}, got {first_pick!r}")
    n = distance.shape[-1]
    _check_k(k, n)
    d = distance.float()
    picks = torch.empty(k, dtype=torch.long, device=d.device)
    if k == 0:
        return picks
    if n == 1:
        nearest = torch.zeros(1, device=d.device)
    elif first_pick == "second-smallest":
        nearest = torch.sort(d, dim=0).values[1]
    else:
        nearest = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf")).amin(dim=0)
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
