"""Token-count schedules of in-LLM methods and solvers from a target budget (pure functions).

Accounting convention (the one the engine's trace reports): ``n_l`` = visual tokens in the *input* of decoder
layer ``l`` (merged/recycled tokens included); the layer-averaged count is ``T_eq = (1/L) sum_l n_l``. A schedule
is a list of ``(K, n)`` pairs: from layer ``K`` on, ``n`` visual tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from llava.compression.registry import CompressionConfigError


def per_layer_counts(num_layers: int, initial: int, schedule: Sequence[tuple[int, int]]) -> list[int]:
    """``[n_0, ..., n_{L-1}]`` for ``initial`` visual tokens and ``(K, n)`` drops (``K`` increasing)."""
    counts = [initial] * num_layers
    for k, n in schedule:
        for layer in range(k, num_layers):
            counts[layer] = n
    return counts


def average_tokens(counts: Sequence[int]) -> float:
    """The layer-averaged visual token count ``T_eq`` of per-layer counts."""
    return sum(counts) / len(counts) if counts else 0.0


def fastv_keep_for_average(target: float, layer: int, num_layers: int, num_visual: int) -> int:
    """FastV's kept count ``t`` so that ``(K N + (L - K) t) / L`` is closest to ``target`` (spec section 2.1).

    E.g. ``K=2, L=32, N=576``: 192 -> 166, 128 -> 98, 64 -> 30.
    """
    t = (num_layers * target - layer * num_visual) / (num_layers - layer)
    return max(0, min(num_visual, round(t)))


def pdrop_stage_counts(num_visual: int, ratio: float, num_stages: int) -> list[int]:
    """PyramidDrop's kept counts after each of ``S`` drops: ``int(N lambda^s)`` for ``s = 1..S``."""
    return [int(num_visual * ratio**s) for s in range(1, num_stages + 1)]


def pdrop_average(num_visual: int, ratio: float, layers: Sequence[int], num_layers: int) -> float:
    """``T_eq`` of a PyramidDrop schedule (drops before each of ``layers``)."""
    counts = pdrop_stage_counts(num_visual, ratio, len(layers))
    return average_tokens(per_layer_counts(num_layers, num_visual, list(zip(layers, counts))))


def solve_pdrop_ratio(target: float, num_visual: int, layers: Sequence[int], num_layers: int) -> float:
    """The ratio ``lambda`` in ``(0, 1]`` whose schedule's ``T_eq`` is closest to ``target`` (ties: larger).

    ``T_eq(lambda)`` is non-decreasing, so bisection on the exact (integer) schedule finds it. With
    ``layers=[2, 8, 16]`` on LLaVA-1.5-7B: 192 -> ~0.56, 128 -> ~0.42, 64 -> ~0.19 (spec section 2.6).
    Raises :class:`CompressionConfigError` when ``target`` is outside ``[T_eq(0+), N]``.
    """
    low_avg = pdrop_average(num_visual, 1e-9, layers, num_layers)
    if not low_avg - 0.5 <= target <= num_visual:
        raise CompressionConfigError(
            f"--visual-token-num {target}: PyramidDrop with layers {list(layers)} of {num_layers} averages between "
            f"{low_avg:.1f} and {num_visual} visual tokens per layer; choose earlier layers for fewer tokens"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if pdrop_average(num_visual, mid, layers, num_layers) < target:
            lo = mid
        else:
            hi = mid
    # hi: smallest ratio reaching the target; lo: largest one below it. Pick the closer average.
    best = min(
        (r for r in (lo, hi) if r > 0),
        key=lambda r: (abs(pdrop_average(num_visual, r, layers, num_layers) - target), -r),
    )
    reached = pdrop_average(num_visual, best, layers, num_layers)
    for digits in range(2, 7):  # the shortest decimal with the same schedule, for readable configs
        short = round(best, digits)
        if 0 < short <= 1 and pdrop_average(num_visual, short, layers, num_layers) == reached:
            return short
    return best


# SparseVLM v1.5 (ICML camera-ready) kept counts at its pruning layers [2, 6, 15], per budget (spec section 2.5).
SPARSEVLM_V15_COUNTS: dict[int, tuple[int, int, int]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
