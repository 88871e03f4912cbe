"""Which visual tokens an in-LLM method keeps (pure tensor functions, one batch row at a time).

Conventions as in ``llava.compression.selection``: scores are fp32, ties go to the lower index, returned *sets*
are sorted ascending (sequence order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.compression.selection import rank_indices, topk_indices


def top_scoring(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest of ``[N]`` scores, ascending indices ``[k]`` (``k`` clipped to ``[0, N]``)."""
    k = max(0, min(int(k), scores.shape[-1]))
    return topk_indices(scores[None].float(), k)[0]


def fastv_keep_count(num_visual: int, ratio_dropped: float | None, keep: int | None) -> int:
    """FastV's kept count: ``keep`` when given (clipped to ``N_v``), else ``round(N_v (1 - R))``."""
    if keep is not None:
        return min(int(keep), num_visual)
    return min(num_visual, max(0, round(num_visual * (1.0 - float(ratio_dropped)))))


DART_PIVOT_ORDERS = ("set", "ascending")


def dart_pivot_order(image_pivots: list[int], text_pivots: list[int], order: str) -> list[int]:
    """The order in which DART's pivots claim tokens, as sequence positions.

    ``"set"`` (upstream): ``list(set(image_pivots + text_pivots))``, built from Python ints exactly as the official
    code does, so the order is CPython's iteration order of a small-int set (``hash(i) == i``: the order of the
    hash-table slots, which depends on the values, the table size and, on collisions, the insertion order; the
    image pivots are inserted first, each kind in descending key-norm order). ``"ascending"``: sorted positions.
    """
    positions = [int(i) for i in image_pivots] + [int(i) for i in text_pivots]
    if order == "set":
        return list(set(positions))
    if order == "ascending":
        return sorted(positions)
    raise ValueError(f"DART pivot order must be one of {DART_PIVOT_ORDERS}, got {order!r}")


def dart_select(
    hidden: torch.Tensor,
    key_norm: torch.Tensor,
    positions: torch.Tensor,
    text_hidden: torch.Tensor,
    text_key_norm: torch.Tensor,
    text_positions: torch.Tensor,
    pivot_image: int,
    pivot_text: int,
    budget: int,
    order: str = "set",
) -> torch.Tensor:
    """DART's duplication-aware selection for one row; returns ascending indices into the ``N`` visual tokens.

    Args:
        hidden: ``[N, D]`` visual tokens after the model's final norm (output of layer ``K-1``).
        key_norm: ``[N]`` L1 norms of their layer ``K-1`` keys.
        positions: ``[N]`` their positions in the (unpadded) prompt sequence: upstream's pivot identifiers, whose
            values decide the ``"set"`` claiming order.
        text_hidden / text_key_norm / text_positions: ``[M, D]`` / ``[M]`` / ``[M]`` the same for the prompt text
            tokens after the image.
        pivot_image / pivot_text: ``p`` / ``q`` pivots, the tokens with the largest key norm of each kind (ties:
            lower index), clipped to what exists: ``p' = min(p, N)``, ``q' = min(q, M)``.
        budget: ``max_num_trunction``; each pivot claims ``k = budget // (p' + q')`` tokens. Upstream divides by
            ``p + q`` (and fails when fewer than ``q`` text tokens follow the image); dividing by the pivots that
            exist keeps the kept count near the budget instead of silently losing ``(q - q') k`` tokens.
        order: the claiming order of the pivots, :func:`dart_pivot_order` (``"set"`` = upstream).

    Every pivot in turn claims the ``k`` not-yet-claimed, non-pivot visual tokens whose hidden state is least
    cosine-similar to its own (fewer when fewer are left). Returns the image pivots plus every claimed token
    (``p' + (p' + q') k`` when enough tokens exist), ascending.
    """
    n = hidden.shape[0]
    p = min(pivot_image, n)
    q = min(pivot_text, text_hidden.shape[0])
    if p + q == 0:
        return torch.zeros(0, dtype=torch.long, device=hidden.device)
    per_pivot = int(budget) // (p + q)
    img_pivots = rank_indices(key_norm[None].float())[0, :p]  # best first, as topk(...).indices
    txt_pivots = rank_indices(text_key_norm[None].float())[0, :q]
    pivot_vector = {int(positions[i]): hidden[i] for i in img_pivots.tolist()}
    pivot_vector.update({int(text_positions[i]): text_hidden[i] for i in txt_pivots.tolist()})
    claim_order = dart_pivot_order(
        positions[img_pivots].tolist(), text_positions[txt_pivots].tolist(), order
    )
    hn = F.normalize(hidden.float(), dim=-1)
    available = torch.ones(n, dtype=torch.bool, device=hidden.device)
    available[img_pivots] = False
    chosen = [img_pivots]
    for position in claim_order:
        left = int(available.sum())
        if left == 0 or per_pivot <= 0:
            break
        sim = hn @ F.normalize(pivot_vector[position].float(), dim=-1)
        sim = sim.masked_fill(~available, float("inf"))
        pick = rank_indices(-sim[None])[0, : min(per_pivot, left)]
        available[pick] = False
        chosen.append(pick)
    return torch.cat(chosen).sort().values


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` -> ``[N, N]`` float64 Euclidean distances divided by ``sqrt(D)`` (SparseVLM's DPC-kNN metric).

    Computed from the coordinate differences (``torch.cdist`` without its matrix-multiply path): the
    ``|a|^2 + |b|^2 - 2 a.b`` shortcut loses every digit when tokens share a large common component (hidden states
    of an LLM do), which reorders the cluster centres. Float64, because the ``N`` here is a few hundred at most.
    """
    x64 = x.detach().to(torch.float64)
    return torch.cdist(x64, x64, compute_mode="donot_use_mm_for_euclid_dist") / x.shape[-1] ** 0.5


def dpc_knn_log_density(dist: torch.Tensor, k: int) -> torch.Tensor:
    """``log`` of DPC-kNN's local density ``exp(-mean of the squared distances to the k nearest tokens)``.

    The token itself is among its ``k`` nearest (distance 0), as upstream. Returned in log space (``[N]`` float64):
    the ranking is the density's, but it cannot round to 1 (tiny activations) or underflow to 0 (large ones),
    which would turn every comparison of densities into a tie.
    """
    k = max(1, min(int(k), dist.shape[-1]))
    nearest = torch.topk(dist, k=k, dim=-1, largest=False).values
    return -(nearest**2).mean(dim=-1)


def dpc_knn_centres(dist: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """DPC-kNN's ``C = min(num_clusters, N)`` cluster centres of ``[N, N]`` distances, best first.

    * local density: :func:`dpc_knn_log_density` with ``k = num_clusters``;
    * each token's distance to the nearest denser token (the densest token gets the largest distance overall).
      Density ties are broken by index, the lower index counting as denser (upstream adds ``1e-6``-scaled random
      noise to the densities instead, so its tie-break is irreproducible; ties only occur for duplicate tokens once
      densities are compared in log space);
    * centres: the largest ``distance * density``, compared as ``log distance + log density`` (same order).
    """
    n = dist.shape[0]
    c = max(1, min(int(num_clusters), n))
    log_density = dpc_knn_log_density(dist, c)
    idx = torch.arange(n, device=dist.device)
    denser = (log_density[None, :] > log_density[:, None]) | (
        (log_density[None, :] == log_density[:, None]) & (idx[None, :] < idx[:, None])
    )
    parent = dist.masked_fill(~denser, float("inf")).amin(dim=-1)
    parent = torch.where(torch.isinf(parent), dist.max(), parent)
    score = parent.log() + log_density  # -inf for a duplicate's parent distance 0, as distance * density = 0
    return torch.sort(score, descending=True, stable=True).indices[:c]


def dpc_knn_merge(x: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseVLM's token recycling: density-peak clustering (DPC-kNN) of ``[N, D]`` tokens, then averaging.

    Centres by :func:`dpc_knn_centres` on exact :func:`pairwise_distances`; every token joins its nearest centre
    (centres join themselves; distance ties -> the better-ranked centre); merged token = mean of its members.

    Returns ``(merged [C, D] in x.dtype, centres [C])`` with ``C = min(num_clusters, N)``, in centre-rank order.
    """
    n, d = x.shape
    dist = pairwise_distances(x)
    centres = dpc_knn_centres(dist, num_clusters)
    c = centres.numel()
    assign = dist[centres].argmin(dim=0)
    assign[centres] = torch.arange(c, device=x.device)
    sums = torch.zeros(c, d, dtype=torch.float32, device=x.device).index_add_(0, assign, x.float())
    counts = torch.bincount(assign, minlength=c).clamp_(min=1).to(torch.float32)
    return (sums / counts[:, None]).to(x.dtype), centres


def sparsevlm_recycle(
    pruned_hidden: torch.Tensor, pruned_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """SparseVLM v1.0/v1.5 recycling of the ``P`` pruned visual tokens of one row.

    The top ``int(0.3 P) + 1`` pruned tokens by score (best first) are clustered into ``int(that / 10) + 1``
    clusters with :func:`dpc_knn_merge`. Returns ``(merged [C, D], centre indices into the P pruned tokens [C])``,
    or ``None`` when nothing was pruned.
    """
    p = pruned_hidden.shape[0]
    if p == 0:
        return None
    m = min(p, int(p * 0.3) + 1)
    order = rank_indices(pruned_scores[None].float())[0, :m]
    merged, centres = dpc_knn_merge(pruned_hidden[order], m // 10 + 1)
    return merged, order[centres]
