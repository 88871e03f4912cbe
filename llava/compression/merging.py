"""How dropped tokens are folded into kept ones (pure tensor functions).

Arithmetic runs in fp32 and the result is cast back to the input dtype. ``x`` are the features that go to
the projector (``[N, C]`` for one image unless said otherwise); metrics used only for similarity may have a
different width. Every function also returns the grouping it used so that callers can trace / draw it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.compression.selection import rank_indices


def knn_weighted_merge(
    x: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, centres: torch.Tensor, num_neighbours: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PruMerge's update of each kept token with its most key-similar tokens.

    For each centre ``i`` the ``m = min(num_neighbours, N - 1)`` other tokens ``j`` (kept or not) with the highest
    cosine similarity of ``keys`` (ties -> lower index) are added, weighted by ``weights`` (the [CLS]
    attention), without normalisation: ``y_i = x_i + sum_j w_j x_j``.

    Args:
        x: ``[N, C]`` features; keys: ``[N, Ck]``; weights: ``[N]``; centres: ``[k]`` token indices (any order).

    Returns:
        ``(y, neighbours)``: ``[k, C]`` in the order of ``centres`` and ``[k, m]`` neighbour indices.
    """
    n = x.shape[0]
    m = min(num_neighbours, n - 1)
    kn = F.normalize(keys.float(), dim=-1)
    sim = kn[centres] @ kn.T  # [k, N]
    sim[torch.arange(centres.numel(), device=sim.device), centres] = float(
        "-inf"
    )  # a token is not its own neighbour
    neighbours = rank_indices(sim)[:, :m]  # [k, m]
    xf = x.float()
    y = xf[centres] + (weights.float()[neighbours].unsqueeze(-1) * xf[neighbours]).sum(dim=1)
    return y.to(x.dtype), neighbours


def weighted_remainder(x: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """PruMerge's extra token: ``sum_{j not in kept} w_j x_j``. ``[N, C]``, ``[N]``, ``[k]`` -> ``[C]``."""
    drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    drop[kept] = False
    return (weights.float()[drop].unsqueeze(-1) * x.float()[drop]).sum(dim=0).to(x.dtype)


def uniform_targets(num_tokens: int, num_targets: int) -> torch.Tensor:
    """VisionZip's merge targets among ``M`` tokens: every ``max(1, M // c)``-th token, the first ``c``. ``[c]``."""
    if not 0 <= num_targets <= num_tokens:
        raise ValueError(f"cannot choose {num_targets} targets among {num_tokens} tokens")
    if num_targets == 0:
        return torch.zeros(0, dtype=torch.long)
    step = max(1, num_tokens // num_targets)
    return torch.arange(0, num_tokens, step, dtype=torch.long)[:num_targets]


def contextual_merge(
    x: torch.Tensor, metric: torch.Tensor, num_targets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens from the ``M`` tokens left after the dominant ones were taken.

    Targets are :func:`uniform_targets`; every other token joins its most cosine-similar target (``metric``,
    ties -> lower target); contextual token ``j = x_target_j + mean of the tokens that joined j`` (just
    ``x_target_j`` when none joined).

    Args:
        x: ``[M, C]`` features (in original order); metric: ``[M, Cm]`` similarity features.

    Returns:
        ``(merged [c, C], targets [c] positions into the M tokens, assignment [M] target slot of every token)``.
    """
    m, dev = x.shape[0], x.device
    targets = uniform_targets(m, num_targets).to(dev)
    assignment = torch.empty(m, dtype=torch.long, device=dev)
    if num_targets == 0:
        return x[:0], targets, assignment.fill_(-1)
    is_target = torch.zeros(m, dtype=torch.bool, device=dev)
    is_target[targets] = True
    others = (~is_target).nonzero().squeeze(-1)
    mn = F.normalize(metric.float(), dim=-1)
    joined = torch.argmax(mn[others] @ mn[targets].T, dim=-1) if others.numel() else others  # [M - c]
    assignment[targets] = torch.arange(num_targets, device=dev)
    assignment[others] = joined
    xf = x.float()
    sums = torch.zeros(num_targets, x.shape[-1], dtype=torch.float32, device=dev).index_add_(
        0, joined, xf[others]
    )
    counts = torch.bincount(joined, minlength=num_targets).clamp_(min=1).unsqueeze(-1)
    merged = xf[targets] + sums / counts
    return merged.to(x.dtype), targets, assignment


def pool_to_grid(x: torch.Tensor, grid: tuple[int, int], out_grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool raster-ordered patch features to a smaller grid (PyTorch adaptive pooling windows).

    ``[B, R*Cg, C]`` on a ``(R, Cg)`` grid -> ``[B, h*w, C]`` on ``out_grid = (h, w)``, raster order.
    """
    b, n, c = x.shape
    rows, cols = grid
    if rows * cols != n:
        raise ValueError(f"{n} tokens do not form a {rows}x{cols} grid")
    img = x.float().transpose(1, 2).reshape(b, c, rows, cols)
    pooled = F.adaptive_avg_pool2d(img, out_grid)  # [B, C, h, w]
    return pooled.flatten(2).transpose(1, 2).to(x.dtype)


def pool_windows(size: int, out: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each adaptive-pooling window along one axis (PyTorch's rule)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def pool_cells(grid: tuple[int, int], out_grid: tuple[int, int]) -> torch.Tensor:
    """Output cell of every patch for drawing: the non-overlapping partition ``floor(r*h/R), floor(c*w/Cg)``.

    Adaptive windows overlap by one patch when the sizes do not divide; each patch is shown in one cell. ``[N]``.
    """
    (rows, cols), (h, w) = grid, out_grid
    r = torch.arange(rows) * h // rows
    c = torch.arange(cols) * w // cols
    return (r[:, None] * w + c[None, :]).flatten()


def pool_centres(grid: tuple[int, int], out_grid: tuple[int, int]) -> torch.Tensor:
    """Raster index of the patch at the centre of each pooling window, ascending ``[h*w]``."""
    (rows, cols), (h, w) = grid, out_grid
    rc = torch.tensor([(s + e - 1) // 2 for s, e in pool_windows(rows, h)])
    cc = torch.tensor([(s + e - 1) // 2 for s, e in pool_windows(cols, w)])
    return (rc[:, None] * cols + cc[None, :]).flatten()
