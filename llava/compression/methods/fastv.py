"""FastV (arXiv 2403.06764, pkunlp-icler/FastV): drop visual tokens before decoder layer ``K``.

Score: layer ``K-1``'s attention row of the last prompt token, averaged over heads, restricted to the visual
tokens (the official code's "last token" variant, computed from that layer's own q/k so SDPA stays on).
Rule: keep the top ``round(N_v (1 - R))`` visual tokens (or ``--visual-token-num`` of them), in original order, for
all layers ``>= K``; text tokens are never dropped. Positions: original (kept tokens keep theirs). With a cache,
pruning is decided once from the prompt ("static KV pruning", the official HF/lmms-eval variants).

Defaults ``K = 2``, ``R = 0.5`` (paper title). Layer-averaged budgets (spec Trap 1): with ``K = 2`` on 32 layers
``T_eq`` 192 / 128 / 64 need ``--visual-token-num`` 166 / 98 / 30
(:func:`fastv_keep_for_average`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llava.compression.llm.base import (
    LLMPruningMethod,
    PruneStep,
    RowSelection,
    budget_option,
    check_layers,
    check_positions,
    positions_option,
)
from llava.compression.llm.schedule import per_layer_counts
from llava.compression.pre_llm import check_budget, check_int
from llava.compression.primitives import top_scoring
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

# -- algorithm (pure functions) ----------------------------------------------------------------------------------


def fastv_keep_count(num_visual: int, ratio_dropped: float | None, keep: int | None) -> int:
    """FastV's kept count: ``keep`` when given (clipped to ``N_v``), else ``round(N_v (1 - R))``."""
    if keep is not None:
        return min(int(keep), num_visual)
    return min(num_visual, max(0, round(num_visual * (1.0 - float(ratio_dropped)))))


def fastv_keep_for_average(target: float, layer: int, num_layers: int, num_visual: int) -> int:
    """FastV's kept count ``t`` so that ``(K N + (L - K) t) / L`` is closest to ``target`` (spec section 2.1).

    E.g. ``K=2, L=32, N=576``: 192 -> 166, 128 -> 98, 64 -> 30.
    """
    t = (num_layers * target - layer * num_visual) / (num_layers - layer)
    return max(0, min(num_visual, round(t)))



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastVConfig(LLMPruningMethod):
    """Top visual tokens by layer ``K-1``'s last-prompt-token attention; dropped before layer ``K``."""

    name: ClassVar[str] = "fastv"
    # every row keeps a count fixed by the config and its visual-token count: the shapes are known in advance
    static_cache_refusal: ClassVar[str | None] = None

    fastv_k: int = option(
        2, "--fastv-k", "FastV: drop visual tokens before this decoder layer (0-based, >= 1)"
    )
    fastv_r: float | None = option(
        None, "--fastv-r", "FastV: fraction of visual tokens dropped (default 0.5)", type=float
    )
    visual_token_num: int | None = budget_option()
    llm_positions: str = positions_option("original")

    def __post_init__(self) -> None:
        check_int("--fastv-k", self.fastv_k)
        check_positions(self.llm_positions)
        if self.fastv_r is not None and self.visual_token_num is not None:
            raise CompressionConfigError("fastv: give either --fastv-r or --visual-token-num, not both")
        if self.fastv_r is not None:
            if isinstance(self.fastv_r, bool) or not isinstance(self.fastv_r, int | float):
                raise CompressionConfigError(f"--fastv-r must be a number, got {self.fastv_r!r}")
            if not 0.0 <= float(self.fastv_r) < 1.0:
                raise CompressionConfigError(
                    f"--fastv-r is the fraction dropped and must be in [0, 1), got {self.fastv_r}"
                )
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)

    @property
    def ratio(self) -> float:
        return 0.5 if self.fastv_r is None else float(self.fastv_r)

    def validate(self, geometry: ModelGeometry) -> None:
        self.prune_layers(geometry)
        if self.visual_token_num is not None:
            check_budget(self.visual_token_num, geometry)

    def prune_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return check_layers("--fastv-k", (self.fastv_k,), geometry)

    def token_schedule(self, geometry: ModelGeometry, visual_tokens: int | None = None) -> list[int]:
        """Visual tokens entering each decoder layer (the engine's trace convention) for a row whose LLM input holds
        ``visual_tokens`` of them (default ``geometry.num_patches``)."""
        n = geometry.num_patches if visual_tokens is None else visual_tokens
        keep = fastv_keep_count(n, self.ratio, self.visual_token_num)
        return per_layer_counts(geometry.llm_layers, n, [(self.prune_layers(geometry)[0], keep)])

    def select(self, step: PruneStep) -> list[RowSelection | None]:
        query = step.last_prompt_index()[:, None]
        # [B, T]: layer K-1's attention row of the last prompt token, averaged over heads
        scores = step.attention(step.layer - 1, query).mean(dim=1)[:, 0]
        out: list[RowSelection | None] = []
        for r in range(step.batch_size):
            vis = step.visual_indices(r)
            if vis.numel() == 0:
                out.append(None)
                continue
            k = fastv_keep_count(vis.numel(), self.ratio, self.visual_token_num)
            out.append(RowSelection(keep=top_scoring(scores[r, vis], k)))
        return out


register(
    MethodSpec(
        "fastv",
        FastVConfig,
        (Stage.LLM,),
        "drop visual tokens before LLM layer K by layer K-1's last-token attention (FastV)",
    )
)
