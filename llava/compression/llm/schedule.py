"""Per-layer token accounting shared by in-LLM methods and the engine (pure functions).

Accounting convention (the one the engine's trace reports): ``n_l`` = visual tokens in the *input* of decoder
layer ``l`` (merged/recycled tokens included); the layer-averaged count is ``T_eq = (1/L) sum_l n_l``. A schedule
is a list of ``(K, n)`` pairs: from layer ``K`` on, ``n`` visual tokens.
"""

from __future__ import annotations

from collections.abc import Sequence


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
