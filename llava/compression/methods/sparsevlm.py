"""SparseVLM **v1.5** (ICML 2025 camera-ready, Gumpest/SparseVLMs ``v1.5`` branch / default mode of ``main``).

Of the three versions in the upstream repository (spec section 2.5) this is v1.5: fixed per-layer counts at the
pruning layers, text raters, token recycling, compacted positions. v1.0's rank-adaptive counts and v2.0's
"attention gravity" correction / head selection are not implemented.

* Text raters (once per prompt, on the LLM input embeddings): ``M = softmax_over_text(V T^T)`` with ``V`` the visual
  tokens and ``T`` the prompt tokens after the image, averaged over ``V``; raters = text tokens scoring above the
  mean (none, or no text after the image: the last prompt token rates alone).
* At each pruning layer ``l`` of ``--sparsevlm-layers`` (default ``2,6,15``) layer ``l`` runs on the full sequence and
  its *output* is pruned, i.e. the engine drops tokens before layer ``l + 1``. Score of visual token ``i``: layer
  ``l``'s attention from the raters to ``i`` (own q/k, causal softmax over all keys), averaged over heads and raters.
  Keep the top ``min(n_l, N_cur - 1)`` in original order, ``n_l`` from ``--sparsevlm-counts`` or the budget preset
  ``--visual-token-num`` 192 / 128 / 96 / 64 -> ``300,200,110`` / ``303,110,36`` / ``238,48,26`` / ``66,30,17``
  (default 192).
* Recycling (``--sparsevlm-recycle``, on): of the pruned tokens, the top ``int(0.3 P) + 1`` by score are clustered
  with DPC-kNN into ``int(that / 10) + 1`` clusters; the cluster means (of layer ``l``'s outputs) are inserted right
  after the kept visual tokens and count as visual tokens from then on (the trace includes them). Numerics differ
  from upstream where upstream's are accidents (:func:`dpc_knn_centres` below): distances are
  exact (float64 coordinate differences, not ``cdist``'s matrix-multiply shortcut), densities are compared in log
  space (upstream's ``exp`` rounds to 1 or underflows to 0, making every density a tie), and density ties (duplicate
  tokens only) go to the lower index where upstream adds random noise.
* Positions: ``compact`` by default (upstream renumbers after each drop; its decode quirk of per-layer cache-length
  positions is the same thing); ``--llm-positions original`` keeps positions (merged tokens take their cluster
  centre's).

Token accounting: upstream's "192" counts each layer's *output*; the engine's trace counts inputs, so layer ``l``
itself is counted with the full sequence (spec Trap 1, Gumpest/SparseVLMs#35).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

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
from llava.compression.llm.schedule import per_layer_counts
from llava.compression.llm.scoring import text_raters
from llava.compression.pre_llm import check_int
from llava.compression.primitives import rank_indices, top_scoring
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

# -- algorithm (pure functions) ----------------------------------------------------------------------------------


# SparseVLM v1.5 (ICML camera-ready) kept counts at its pruning layers [2, 6, 15], per budget (spec section 2.5).
SPARSEVLM_V15_COUNTS: dict[int, tuple[int, int, int]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}


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



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseVLMConfig(LLMPruningMethod):
    """SparseVLM v1.5: text-rater-guided drops at layers ``2, 6, 15`` with token recycling."""

    name: ClassVar[str] = "sparsevlm"
    static_cache_refusal: ClassVar[str | None] = (
        "it recycles a data-dependent number of merged tokens per row (raters and clusters come from the prompt)"
    )
    default_positions: ClassVar[str] = "compact"

    sparsevlm_layers: str = option(
        "2,6,15",
        "--sparsevlm-layers",
        "SparseVLM: layers whose attention scores the visual tokens and whose output is pruned",
        type=str,
    )
    sparsevlm_counts: str | None = option(
        None,
        "--sparsevlm-counts",
        "SparseVLM: visual tokens kept at each pruning layer (default: the --visual-token-num preset)",
        type=str,
    )
    visual_token_num: int | None = budget_option()
    sparsevlm_recycle: bool = option(
        True, "--sparsevlm-recycle", "SparseVLM: recycle pruned tokens (DPC-kNN merge)"
    )
    llm_positions: str = positions_option("compact")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsevlm_layers", ",".join(
            str(k) for k in parse_int_list("--sparsevlm-layers", self.sparsevlm_layers)
        ))
        check_positions(self.llm_positions)
        if not isinstance(self.sparsevlm_recycle, bool):
            raise CompressionConfigError(
                f"--sparsevlm-recycle must be a bool, got {self.sparsevlm_recycle!r}"
            )
        if self.sparsevlm_counts is not None and self.visual_token_num is not None:
            raise CompressionConfigError(
                "sparsevlm: give either --sparsevlm-counts or --visual-token-num, not both"
            )
        if self.visual_token_num is not None and self.visual_token_num not in SPARSEVLM_V15_COUNTS:
            raise CompressionConfigError(
                f"sparsevlm: --visual-token-num selects a v1.5 preset, one of {sorted(SPARSEVLM_V15_COUNTS)}; got "
                f"{self.visual_token_num} (use --sparsevlm-counts for other schedules)"
            )
        if self.sparsevlm_counts is not None:
            object.__setattr__(self, "sparsevlm_counts", ",".join(
                str(n) for n in parse_int_list("--sparsevlm-counts", self.sparsevlm_counts)
            ))
        for n in self.counts:
            check_int("--sparsevlm-counts", n, 1)

    @property
    def layers(self) -> tuple[int, ...]:
        return parse_int_list("--sparsevlm-layers", self.sparsevlm_layers)

    @property
    def counts(self) -> tuple[int, ...]:
        if self.sparsevlm_counts is not None:
            return parse_int_list("--sparsevlm-counts", self.sparsevlm_counts)
        return SPARSEVLM_V15_COUNTS[self.visual_token_num or 192]

    def validate(self, geometry: ModelGeometry) -> None:
        self.prune_layers(geometry)
        if len(self.counts) != len(self.layers):
            raise CompressionConfigError(
                f"sparsevlm: {len(self.layers)} pruning layers {list(self.layers)} but {len(self.counts)} counts "
                f"{list(self.counts)}"
            )
        for n in self.counts:
            check_int("--sparsevlm-counts", n, 1, geometry.num_patches)

    def prune_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        for layer in self.layers:
            check_int(
                "--sparsevlm-layers",
                layer,
                0,
                geometry.llm_layers - 2,
                f" (the LLM has {geometry.llm_layers} layers and the last one cannot prune its output usefully)",
            )
        return check_layers("--sparsevlm-layers (+1)", tuple(k + 1 for k in self.layers), geometry)

    def token_schedule(self, geometry: ModelGeometry, visual_tokens: int | None = None) -> list[int]:
        """Visual tokens entering each decoder layer (the engine's trace convention) for a row whose LLM input holds
        ``visual_tokens`` of them (default ``geometry.num_patches``): at each pruning layer ``min(count, current - 1)`` kept plus, with recycling, ``int(m / 10) + 1`` cluster
        means of the top ``m = int(0.3 P) + 1`` of the ``P`` pruned tokens (see :func:`sparsevlm_recycle`)."""
        n = geometry.num_patches if visual_tokens is None else visual_tokens
        current, drops = n, []
        for layer, count in zip(self.prune_layers(geometry), self.counts):
            keep = min(count, current - 1)
            pruned = current - keep
            recycled = 0
            if self.sparsevlm_recycle and pruned > 0:
                m = min(pruned, int(pruned * 0.3) + 1)
                recycled = min(m // 10 + 1, m)
            current = keep + recycled
            drops.append((layer, current))
        return per_layer_counts(geometry.llm_layers, n, drops)

    def select(self, step: PruneStep) -> list[RowSelection | None]:
        count = self.counts[step.stage]
        raters = [self._rater_indices(step, r) for r in range(step.batch_size)]
        width = max(1, max(x.numel() for x in raters))
        fallback = step.last_prompt_index()
        queries = fallback[:, None].repeat(1, width)
        query_valid = torch.zeros_like(queries, dtype=torch.bool)
        for r, idx in enumerate(raters):
            if idx.numel() == 0:
                query_valid[r, 0] = True  # the last prompt token rates alone
            else:
                queries[r, : idx.numel()] = idx
                query_valid[r, : idx.numel()] = True
        attn = step.attention(step.layer - 1, queries, query_valid).mean(dim=1)  # [B, Q, T]
        weights = query_valid.float()
        scores = (attn * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)  # [B, T]
        out: list[RowSelection | None] = []
        for r in range(step.batch_size):
            vis = step.visual_indices(r)
            if vis.numel() == 0:
                out.append(None)
                continue
            row_scores = scores[r, vis]
            keep = top_scoring(row_scores, min(count, vis.numel() - 1))
            merged = centres = None
            if self.sparsevlm_recycle:
                pruned = torch.ones(vis.numel(), dtype=torch.bool, device=vis.device)
                pruned[keep] = False
                pruned = torch.nonzero(pruned).flatten()
                recycled = sparsevlm_recycle(step.hidden[r, vis[pruned]], row_scores[pruned])
                if recycled is not None:
                    merged, centre_idx = recycled
                    centres = pruned[centre_idx]
            out.append(RowSelection(keep=keep, merged=merged, merged_position_of=centres))
        return out

    @staticmethod
    def _rater_indices(step: PruneStep, row: int) -> torch.Tensor:
        """Current indices of the row's text raters (computed on the LLM input embeddings)."""
        vis_in = torch.nonzero(step.input_visual[row] & step.input_prompt[row]).flatten()
        if vis_in.numel() == 0:
            return vis_in
        positions = torch.arange(step.input_prompt.shape[1], device=vis_in.device)
        text_in = torch.nonzero(
            step.input_prompt[row] & ~step.input_visual[row] & (positions > vis_in[-1])
        ).flatten()
        emb = step.inputs_embeds[row]
        rater_in = text_in[text_raters(emb[vis_in], emb[text_in])]
        current = torch.isin(step.orig_index[row], rater_in) & step.valid[row]
        return torch.nonzero(current).flatten()


register(
    MethodSpec(
        "sparsevlm",
        SparseVLMConfig,
        (Stage.LLM,),
        "text-rater-guided staged drops with token recycling (SparseVLM v1.5)",
    )
)
