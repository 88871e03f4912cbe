"""LLaVA-PruMerge and PruMerge+ (arXiv 2403.15388), training-free, before the projector.

Score: the [CLS] attention of the encoder layer *after* the feature layer (layer 23 of CLIP-L, whose input is
``hidden_states[-2]``), computed as one head over the full width (``softmax(q_cls . k / sqrt(C))``), as upstream.

Selection (count conventions):

* ``prumerge`` without ``--visual-token-num``: upstream's adaptive budget, the IQR outliers of the score
  (``> Q3 + 1.5 IQR``, per image; upstream pools the quartiles over the batch). Output: those ``k`` tokens + 1.
* ``prumerge+`` without ``--visual-token-num``: the outliers, then the spatially uniform indices
  ``0, s, 2s, ... < N - 1`` with ``s = max(1, int(N / k) // 3)`` that are not already kept. Output: kept + 1.
* ``prumerge`` with ``--visual-token-num T``: the top ``T - 1`` tokens + the extra token (exactly ``T``).
* ``prumerge+`` with ``--visual-token-num T``, ``--prumerge-budget-rule vtc-cls`` (default): the rule of the
  VTC-CLS repository, which made the only published fixed-budget PruMerge+ rows (64 / 128 / 256): the top ``c``
  tokens by score, then every index of ``range(0, N - 1, s // 3)`` (``range(0, 575, ...)`` for 576 patches) not
  already kept, with ``(c, s) = (13, 33)`` for ``T = 64``, ``(40, 18)`` for ``T = 128`` and ``(95, 9)`` for any other
  ``T`` (``c`` capped at ``N``). The count lands *near* ``T``, not on it (54-67 tokens for 64, 97-137 for 128,
  193-288 otherwise, the extra token included) and varies per image; every trace records the real count.
* ``prumerge+`` with ``--prumerge-budget-rule exact-count``: exactly ``T`` tokens, the extra token included: the top
  ``ceil((T - 1) * r)`` (``r = --prumerge-top-ratio``, default 0.5, the share of upstream's training-time
  fixed-budget branch, top ``576 r`` + a uniform grid of ``576 r``) and the rest filled with spatially uniform,
  distinct patches.

Merge: every kept token adds its ``--prumerge-knn`` (32) most key-similar other patches (cosine of the same
layer's full-width keys), weighted by their [CLS] attention, unnormalised (upstream); one extra token is the
attention-weighted sum of all dropped patches and comes last. Token order: ``rank`` (upstream: the top tokens
by score, then the uniform ones, then the extra token) or ``raster`` (kept tokens ascending, extra token last).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from llava.compression.pre_llm import (
    PreLLMMethod,
    Reduction,
    VisionSignals,
    check_budget,
    check_choice,
    check_int,
)
from llava.compression.primitives import check_k, patch_scores, rank_indices, topk_in_rank_order
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

TOKEN_ORDERS = ("rank", "raster")
BUDGET_RULES = ("vtc-cls", "exact-count")
DEFAULT_TOP_RATIO = 0.5
# VTC-CLS repository's PruMerge+ baseline: --visual-token-num -> (top tokens c, s); the uniform stride is s // 3
VTC_CLS_TOP_AND_SPACING = {64: (13, 33), 128: (40, 18)}
VTC_CLS_OTHER_BUDGETS = (95, 9)
VTC_CLS_RULE_PATCHES = 576  # the grid the rule's constants were made for (range(0, 575, ...))


# -- algorithm (pure functions) ----------------------------------------------------------------------------------


def iqr_outlier_count(scores: torch.Tensor) -> int:
    """PruMerge's adaptive budget for one image: how many scores lie above ``Q3 + 1.5 (Q3 - Q1)``.

    ``scores`` is ``[N]``; quartiles use linear interpolation (``numpy.percentile``'s default). The outliers
    are exactly the top-``count`` tokens, so ``topk_in_rank_order(scores, count)`` selects them.
    """
    s = scores.float().flatten()
    q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype, device=s.device))
    return int((s > q3 + 1.5 * (q3 - q1)).sum())


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
    check_k(k, m)
    if k == 0:
        return candidates[:0]
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) * m / k).floor().to(torch.long).clamp_(max=m - 1)
    return candidates[pos]



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruMergeConfig(PreLLMMethod):
    """IQR-outlier (or top ``T - 1``) [CLS]-attention tokens, each merged with its key neighbours, + 1 token."""

    name: ClassVar[str] = "prumerge"
    uniform: ClassVar[bool] = False

    visual_token_num: int | None = option(
        None,
        "--visual-token-num",
        "visual tokens per image given to the LLM (prumerge/prumerge+: unset = adaptive IQR budget; prumerge+ "
        "lands near T under its default --prumerge-budget-rule vtc-cls)",
        type=int,
    )
    prumerge_knn: int = option(32, "--prumerge-knn", "neighbours merged into every kept token (PruMerge)")
    token_order: str = option(
        "rank", "--token-order", "order of PruMerge's tokens: rank (upstream) or raster", choices=TOKEN_ORDERS
    )

    def __post_init__(self) -> None:
        if self.visual_token_num is not None:
            check_int(
                "--visual-token-num", self.visual_token_num, 2, what=" (PruMerge counts its extra token)"
            )
        check_int("--prumerge-knn", self.prumerge_knn, 1)
        check_choice("--token-order", self.token_order, TOKEN_ORDERS)

    def validate(self, geometry: ModelGeometry) -> None:
        if self.visual_token_num is not None:
            check_budget(self.visual_token_num, geometry, low=2)
        layer = geometry.feature_layer + 1
        if not 0 <= layer < geometry.vision_layers:
            raise CompressionConfigError(
                f"{self.name} scores the encoder layer after the feature layer, but vision_feature_layer="
                f"{geometry.vision_feature_layer} selects the last layer's output"
            )

    def probe_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return (geometry.feature_layer + 1,)

    def centres(self, scores: torch.Tensor) -> torch.Tensor:
        """Kept token indices of one image (``scores`` is ``[N]``), in upstream (rank) order."""
        n = scores.shape[-1]
        if self.visual_token_num is None:
            k = max(1, iqr_outlier_count(scores))
            top = topk_in_rank_order(scores[None], k)[0]
            if not self.uniform:
                return top
            stride = max(1, (n // k) // 3)
            return append_unique(top, strided_indices(n - 1, stride).to(top.device))
        budget = self.visual_token_num - 1
        if not self.uniform:
            return topk_in_rank_order(scores[None], budget)[0]
        return self._top_and_uniform(scores, budget)

    def _top_and_uniform(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        raise NotImplementedError

    def token_schedule(self, geometry: ModelGeometry) -> list[int] | None:
        """Visual tokens of one image entering each decoder layer: the budget (the extra token included; under
        PruMerge+'s VTC-CLS rule the label, the real count is close to it), or ``None`` without a budget, where the
        IQR outlier count makes it image-dependent."""
        if self.visual_token_num is None:
            return None
        return [self.visual_token_num] * geometry.llm_layers

    def reduce(self, signals: VisionSignals) -> Reduction:
        layer = signals.feature_layer + 1
        attn = patch_scores(signals.cls_attention_single_head(layer))  # [B, N]
        keys = signals.layer_keys(layer)[:, 1:]  # [B, N, C]
        x = signals.patches
        n = x.shape[1]
        feats, kept, groups = [], [], []
        for i in range(x.shape[0]):
            centres = self.centres(attn[i])
            if self.token_order == "raster":
                centres = centres.sort().values
            merged, neighbours = knn_weighted_merge(x[i], keys[i], attn[i], centres, self.prumerge_knn)
            extra = weighted_remainder(x[i], attn[i], centres)
            feats.append(torch.cat([merged, extra[None]]))
            kept.append(centres.sort().values)
            groups.append(_groups(n, centres, neighbours))
        return Reduction(features=feats, kept_indices=kept, groups=groups)


@dataclass(frozen=True)
class PruMergePlusConfig(PruMergeConfig):
    """PruMerge plus spatially uniform tokens."""

    name: ClassVar[str] = "prumerge+"
    uniform: ClassVar[bool] = True

    prumerge_budget_rule: str = option(
        "vtc-cls",
        "--prumerge-budget-rule",
        "PruMerge+ with --visual-token-num T: vtc-cls (default; the VTC-CLS repository's rule behind the published "
        "fixed-budget rows: top 13/40/95 tokens + a uniform grid of stride 11/6/3 for T = 64/128/other, count near "
        "T) or exact-count (exactly T: top share --prumerge-top-ratio + evenly spread distinct patches)",
        choices=BUDGET_RULES,
    )
    prumerge_top_ratio: float | None = option(
        None,
        "--prumerge-top-ratio",
        f"PruMerge+ with --prumerge-budget-rule exact-count: share of the kept tokens chosen by score "
        f"(default {DEFAULT_TOP_RATIO})",
        type=float,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("--prumerge-budget-rule", self.prumerge_budget_rule, BUDGET_RULES)
        r = self.prumerge_top_ratio
        if r is None:
            return
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < r <= 1.0:
            raise CompressionConfigError(f"--prumerge-top-ratio must be in (0, 1], got {r!r}")
        if self.prumerge_budget_rule != "exact-count":
            raise CompressionConfigError(
                "--prumerge-top-ratio only applies to --prumerge-budget-rule exact-count; add that flag or drop "
                "--prumerge-top-ratio"
            )

    def validate(self, geometry: ModelGeometry) -> None:
        super().validate(geometry)
        if self.budget_is_approximate and geometry.num_patches != VTC_CLS_RULE_PATCHES:
            raise CompressionConfigError(
                f"prumerge+ --visual-token-num follows the VTC-CLS rule by default, which is defined for "
                f"{VTC_CLS_RULE_PATCHES} patches (LLaVA-1.5's 24x24 grid); this model gives {geometry.num_patches} "
                "per image or frame: add --prumerge-budget-rule exact-count"
            )

    @property
    def budget_is_approximate(self) -> bool:
        """``--visual-token-num`` only steers the count (the VTC-CLS rule); the traces hold the real one."""
        return self.visual_token_num is not None and self.prumerge_budget_rule == "vtc-cls"

    def _top_and_uniform(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        n = scores.shape[-1]
        if self.prumerge_budget_rule == "vtc-cls":
            top_count, spacing = VTC_CLS_TOP_AND_SPACING.get(self.visual_token_num, VTC_CLS_OTHER_BUDGETS)
            top = topk_in_rank_order(scores[None], min(top_count, n))[0]
            return append_unique(top, strided_indices(n - 1, spacing // 3).to(top.device))
        ratio = DEFAULT_TOP_RATIO if self.prumerge_top_ratio is None else self.prumerge_top_ratio
        n_top = min(budget, max(1, math.ceil(budget * ratio)))
        top = topk_in_rank_order(scores[None], n_top)[0]
        rest = uniform_fill(n, budget - n_top, exclude=top).to(top.device)
        return torch.cat([top, rest])


def _groups(n: int, centres: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Output slot of every patch for drawing: its first centre among those that merged it, else the extra token."""
    k = centres.numel()
    g = torch.full((n,), k, dtype=torch.long, device=centres.device)  # the extra token
    for slot in range(k - 1, -1, -1):
        g[neighbours[slot]] = slot
    g[centres] = torch.arange(k, device=centres.device)
    return g


register(
    MethodSpec(
        "prumerge",
        PruMergeConfig,
        (Stage.PRE_LLM,),
        "IQR-outlier [CLS]-attention tokens merged with their key neighbours + 1 (LLaVA-PruMerge, training-free)",
        aliases=("llava_prumerge_base",),
        requires=frozenset({"cls"}),  # scores patches by the [CLS] token's attention
    )
)
register(
    MethodSpec(
        "prumerge+",
        PruMergePlusConfig,
        (Stage.PRE_LLM,),
        "PruMerge plus spatially uniform tokens (PruMerge+, training-free)",
        aliases=("prumerge_plus", "prumerge-plus", "llava_prumerge"),
        requires=frozenset({"cls"}),  # scores patches by the [CLS] token's attention
    )
)
