"""PyramidDrop (arXiv 2410.17247, Cooperx521/PyramidDrop): staged drops at the ends of LLM stages.

Schedule: before each layer of ``--pdrop-layers`` (default ``8,16,24``, i.e. after layers 7, 15, 23) the visual
tokens are cut to ``int(N_v * lambda^s)`` after stage ``s = 1, 2, ...`` (``N_v`` = visual tokens at the LLM input,
``--pdrop-lambda`` default 0.5, so ``T_eq = 270`` on LLaVA-1.5-7B).
Score ("lightweight attention"): at boundary ``K`` the *next* layer's own ``input_layernorm`` / ``q_proj`` /
``k_proj`` with RoPE at the current positions, the last instruction (prompt) token's query against all keys
(causal), softmax, head mean, visual columns. Keep the top-scoring tokens in original order.
Positions: ``compact`` by default as upstream (renumbered after each drop; generated tokens continue after the
shortened length); ``--llm-positions original`` keeps them.

Budget solver: ``--visual-token-num T`` picks ``lambda`` so the layer-averaged count (input-side, the engine's trace
convention) is closest to ``T`` for the given layers, e.g. layers ``2,8,16``: 192 / 128 / 64 -> lambda 0.5606 /
0.421 / 0.193 (the author's recipe for small budgets; ``8,16,24`` cannot go below 144).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from llava.compression.llm.base import (
    LLMPruningMethod,
    PruneStep,
    RowSelection,
    budget_option,
    check_layers,
    check_positions,
    parse_int_list,
    positions_option,
)
from llava.compression.llm.schedule import average_tokens, per_layer_counts
from llava.compression.pre_llm import check_int
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



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PDropConfig(LLMPruningMethod):
    """Keep ``int(N_v lambda^s)`` visual tokens after stage ``s`` by the last prompt token's attention."""

    name: ClassVar[str] = "pdrop"
    # every stage keeps a count fixed by the config and the row's visual-token count: the shapes are known in advance
    static_cache_refusal: ClassVar[str | None] = None
    default_positions: ClassVar[str] = "compact"

    pdrop_layers: str = option(
        "8,16,24",
        "--pdrop-layers",
        "PyramidDrop: stage boundaries, tokens dropped before these layers",
        type=str,
    )
    pdrop_lambda: float | None = option(
        None, "--pdrop-lambda", "PyramidDrop: ratio kept per stage (default 0.5)", type=float
    )
    visual_token_num: int | None = budget_option()
    llm_positions: str = positions_option("compact")

    def __post_init__(self) -> None:
        object.__setattr__(self, "pdrop_layers", ",".join(str(k) for k in parse_int_list("--pdrop-layers", self.pdrop_layers)))
        check_positions(self.llm_positions)
        if self.pdrop_lambda is not None and self.visual_token_num is not None:
            raise CompressionConfigError("pdrop: give either --pdrop-lambda or --visual-token-num, not both")
        if self.pdrop_lambda is not None:
            if isinstance(self.pdrop_lambda, bool) or not isinstance(self.pdrop_lambda, int | float):
                raise CompressionConfigError(f"--pdrop-lambda must be a number, got {self.pdrop_lambda!r}")
            if not 0.0 < float(self.pdrop_lambda) <= 1.0:
                raise CompressionConfigError(f"--pdrop-lambda must be in (0, 1], got {self.pdrop_lambda}")
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)

    @property
    def layers(self) -> tuple[int, ...]:
        return parse_int_list("--pdrop-layers", self.pdrop_layers)

    def ratio(self, geometry: ModelGeometry) -> float:
        """``lambda``: given, solved from ``--visual-token-num`` on ``geometry``, or 0.5."""
        if self.visual_token_num is not None:
            return solve_pdrop_ratio(
                self.visual_token_num, geometry.num_patches, self.layers, geometry.llm_layers
            )
        return 0.5 if self.pdrop_lambda is None else float(self.pdrop_lambda)

    def validate(self, geometry: ModelGeometry) -> None:
        self.prune_layers(geometry)
        self.ratio(geometry)  # raises when the target is out of reach

    def prune_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return check_layers("--pdrop-layers", self.layers, geometry)

    def trace_extras(self, geometry: ModelGeometry) -> dict[str, Any]:
        return {"pdrop_lambda": self.ratio(geometry)}

    def token_schedule(self, geometry: ModelGeometry, visual_tokens: int | None = None) -> list[int]:
        """Visual tokens entering each decoder layer (the engine's trace convention) for a row whose LLM input holds
        ``visual_tokens`` of them (default ``geometry.num_patches``)."""
        n = geometry.num_patches if visual_tokens is None else visual_tokens
        layers = self.prune_layers(geometry)
        counts = pdrop_stage_counts(n, self.ratio(geometry), len(layers))
        return per_layer_counts(geometry.llm_layers, n, list(zip(layers, counts)))

    def select(self, step: PruneStep) -> list[RowSelection | None]:
        ratio = self.ratio(step.geometry)
        query = step.last_prompt_index()[:, None]
        scores = step.attention(step.layer, query).mean(dim=1)[:, 0]  # the next layer's own q/k
        out: list[RowSelection | None] = []
        for r in range(step.batch_size):
            vis = step.visual_indices(r)
            if vis.numel() == 0:
                out.append(None)
                continue
            keep = pdrop_stage_counts(step.input_visual_count(r), ratio, step.stage + 1)[-1]
            out.append(RowSelection(keep=top_scoring(scores[r, vis], keep)))
        return out


register(
    MethodSpec(
        "pdrop",
        PDropConfig,
        (Stage.LLM,),
        "staged visual-token drops by the last instruction token's attention (PyramidDrop)",
        aliases=("pyramiddrop",),
    )
)
