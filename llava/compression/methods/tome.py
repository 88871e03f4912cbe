"""ToMe (Bolya et al., ICLR 2023): bipartite soft matching inside every CLIP encoder layer.

In each encoder layer ``0 .. F`` (``F`` = the feature layer, 22 for LLaVA-1.5; merges after it would not reach the
LLM), after the attention residual and before the MLP, ``r_l`` tokens are merged by bipartite soft matching on the
layer's keys averaged over heads (cosine similarity; even positions = set A, odd = set B; the [CLS] is never
merged). Merges are size-weighted averages and every token carries its size; with proportional attention
(default on, as in ToMe for off-the-shelf models) every later layer adds ``log size`` to its attention logits
through an additive mask, which SDPA and eager attention both accept (FlashAttention does not).

Count convention: ``--visual-token-num T`` is the number of patch tokens the LLM gets per image (the [CLS] is
dropped as usual). The budget is met exactly:

* ``--visual-token-num T``: ``576 - T`` merges spread as evenly as possible over layers ``0 .. F`` (earlier
  layers take the remainder);
* ``--tome-r r``: ``r`` merges in every layer (ToMe's constant schedule), the count follows (``576 - 23 r``);
* both: ``r`` per layer until ``T`` is reached.

Each layer merges at most half of its tokens (ToMe's cap).

Token order (``--tome-token-order``): ``official`` (default, what the published ToMe baselines ran) emits the
survivors of every merge as the official code does, ``[unmerged A, ascending] + [B]``, so the next layer's A / B
split is taken on that order and the LLM receives the tokens in it; ``raster`` keeps the survivors in sequence
(raster) order in every layer, which changes which tokens can merge in later layers (over 23 layers of LLaVA-1.5
only a fraction of the merge groups agree between the two). In both orders the trace's ``kept_indices`` are the
ascending raster indices of the patches the output tokens started as; ``token_origins`` on the
``get_image_features`` output lists them in output order and ``token_groups`` maps every patch to its output token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from llava.compression.pre_llm import check_budget, check_choice, check_feature_layer, check_int
from llava.compression.primitives import merge_schedule
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)
from llava.compression.vision_encoder import EncoderTokens, LayerAttention, VisionEncoderMethod

DEFAULT_BUDGET = 64


# -- bipartite soft matching (pure functions) --------------------------------------------------------------------


TOKEN_ORDERS = ("official", "raster")


@dataclass
class MergePlan:
    """Which tokens merge into which, in sequence-index space (``[B, r]`` each, ``torch.long``).

    src: tokens that disappear; dst: the token each of them is merged into (a survivor);
    keep: ``[B, n - r]`` surviving token indices in their output order (ascending for the ``raster`` order).
    """

    src: torch.Tensor
    dst: torch.Tensor
    keep: torch.Tensor

    @property
    def r(self) -> int:
        return self.src.shape[1]


def key_metric(keys: torch.Tensor, num_heads: int) -> torch.Tensor:
    """ToMe's similarity metric: the layer's keys averaged over heads. ``[B, n, C]`` -> ``[B, n, C/H]`` fp32."""
    b, n, c = keys.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by {num_heads} heads")
    return keys.float().reshape(b, n, num_heads, c // num_heads).mean(dim=2)


def max_merges(num_tokens: int, protected: int = 1) -> int:
    """The most tokens one bipartite step can merge: ``(n - protected) // 2`` (ToMe's cap on ``r``)."""
    return max(0, (num_tokens - protected) // 2)


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, protect_first: bool = True, order: str = "official"
) -> MergePlan:
    """One ToMe matching step over ``n`` tokens.

    Tokens at even positions form set A, odd positions set B. Every A token's best B partner is its most
    cosine-similar one (ties -> lower index); the ``r`` A tokens with the most similar partners (ties -> lower
    index) merge into them. With ``protect_first`` token 0 (the [CLS]) is never a source. ``r`` is capped at
    :func:`max_merges`, as in ToMe.

    Args:
        metric: ``[B, n, d]`` similarity features (see :func:`key_metric`).
        r: merges wanted.
        order: order of the survivors in ``keep`` (see :data:`TOKEN_ORDERS` and the module docstring).

    Returns:
        :class:`MergePlan` with ``min(r, cap)`` merges.
    """
    if order not in TOKEN_ORDERS:
        raise ValueError(f"ToMe token order must be one of {', '.join(TOKEN_ORDERS)}, got {order!r}")
    b, n, _ = metric.shape
    r = min(r, max_merges(n, 1 if protect_first else 0))
    dev = metric.device
    if r <= 0:  # no merge: the official code returns the tokens untouched
        empty = torch.zeros(b, 0, dtype=torch.long, device=dev)
        return MergePlan(empty, empty.clone(), torch.arange(n, device=dev).expand(b, n).clone())
    m = F.normalize(metric.float(), dim=-1)
    a_idx = torch.arange(0, n, 2, device=dev)
    b_idx = torch.arange(1, n, 2, device=dev)
    scores = m[:, a_idx] @ m[:, b_idx].transpose(1, 2)  # [B, |A|, |B|]
    if protect_first:
        scores[:, 0, :] = float("-inf")
    node_idx = scores.argmax(dim=-1)  # best B partner; ties -> the first (lower) index
    node_max = torch.gather(scores, 2, node_idx.unsqueeze(-1)).squeeze(-1)
    edge_order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices  # A tokens, best edge first
    src_a = edge_order[:, :r]
    src = a_idx[src_a]  # [B, r]
    dst = b_idx[torch.gather(node_idx, 1, src_a)]
    if order == "raster":
        gone = torch.zeros(b, n, dtype=torch.bool, device=dev)
        gone.scatter_(1, src, True)
        keep = torch.arange(n, device=dev).expand(b, n)[~gone].reshape(b, n - r)
    else:
        unmerged_a = edge_order[:, r:]
        if protect_first:  # the official code sorts them so that the [CLS] stays first
            unmerged_a = unmerged_a.sort(dim=-1).values
        keep = torch.cat([a_idx[unmerged_a], b_idx.expand(b, -1)], dim=1)
    return MergePlan(src=src, dst=dst, keep=keep)


def merge_weighted_average(
    x: torch.Tensor, sizes: torch.Tensor, plan: MergePlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's size-weighted merge: ``x_d <- (s_d x_d + sum_{s->d} s_s x_s) / (s_d + sum s_s)``, ``s_d <- s_d + sum s_s``.

    The size-weighted sum ``sum_i s_i x_i`` and the total size are conserved.

    Args:
        x: ``[B, n, C]`` tokens; sizes: ``[B, n]`` how many original patches each token stands for.

    Returns:
        ``(x [B, n - r, C], sizes [B, n - r])`` for the tokens in ``plan.keep``, in its order.
    """
    xf = x.float()
    s = sizes.float()
    mass = xf * s.unsqueeze(-1)
    if plan.r:
        c = x.shape[-1]
        src_mass = torch.gather(mass, 1, plan.src.unsqueeze(-1).expand(-1, -1, c))
        mass = mass.scatter_add(1, plan.dst.unsqueeze(-1).expand(-1, -1, c), src_mass)
        s = s.scatter_add(1, plan.dst, torch.gather(s, 1, plan.src))
    keep_mass = torch.gather(mass, 1, plan.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    keep_sizes = torch.gather(s, 1, plan.keep)
    return (keep_mass / keep_sizes.unsqueeze(-1)).to(x.dtype), keep_sizes.to(sizes.dtype)



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToMeConfig(VisionEncoderMethod):
    """Bipartite soft matching with size tracking and proportional attention in every encoder layer."""

    name: ClassVar[str] = "tome"

    visual_token_num: int | None = option(
        None,
        "--visual-token-num",
        "visual tokens per image given to the LLM (ToMe: reached exactly; default 64 unless --tome-r is given)",
        type=int,
    )
    tome_r: int | None = option(
        None,
        "--tome-r",
        "ToMe: tokens merged per encoder layer (with --visual-token-num: until it is reached)",
        type=int,
    )
    tome_prop_attn: bool = option(
        True, "--tome-prop-attn", "ToMe: proportional attention (add log token size to the attention logits)"
    )
    tome_token_order: str = option(
        "official",
        "--tome-token-order",
        "ToMe: order of the tokens after every merge: official ([unmerged set-A tokens] + [set-B tokens], as the "
        "official code; default) or raster (survivors keep their sequence order)",
        choices=TOKEN_ORDERS,
    )

    def __post_init__(self) -> None:
        if self.visual_token_num is None and self.tome_r is None:
            object.__setattr__(self, "visual_token_num", DEFAULT_BUDGET)
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)
        if self.tome_r is not None:
            check_int("--tome-r", self.tome_r, 0)
        if not isinstance(self.tome_prop_attn, bool):
            raise CompressionConfigError(f"--tome-prop-attn must be a boolean, got {self.tome_prop_attn!r}")
        check_choice("--tome-token-order", self.tome_token_order, TOKEN_ORDERS)

    @property
    def proportional_attention(self) -> bool:
        return self.tome_prop_attn

    def merge_layers(self, geometry: ModelGeometry) -> list[int]:
        return list(range(0, geometry.feature_layer + 1))

    def per_layer(self, geometry: ModelGeometry) -> list[int]:
        """Merges in each of :meth:`merge_layers` (raises :class:`CompressionConfigError` when infeasible)."""
        layers = self.merge_layers(geometry)
        try:
            return merge_schedule(
                geometry.num_patches,
                len(layers),
                target=self.visual_token_num,
                r=self.tome_r,
                cap=lambda n: max_merges(n + 1, protected=1),
            )
        except ValueError as err:
            raise CompressionConfigError(
                f"tome: {err} (ToMe merges at most half the tokens per layer)"
            ) from None

    def validate(self, geometry: ModelGeometry) -> None:
        if self.visual_token_num is not None:
            check_budget(self.visual_token_num, geometry)
        check_feature_layer(geometry, self.name)
        self.per_layer(geometry)

    def schedule(self, geometry: ModelGeometry) -> dict[int, int]:
        return dict(zip(self.merge_layers(geometry), self.per_layer(geometry)))

    def final_count(self, geometry: ModelGeometry) -> int:
        return geometry.num_patches - sum(self.per_layer(geometry))

    def trace_extras(self) -> dict[str, Any]:
        return {"tome_prop_attn": self.tome_prop_attn, "tome_token_order": self.tome_token_order}

    def merge(
        self, x: torch.Tensor, attention: LayerAttention, tokens: EncoderTokens, r: int
    ) -> torch.Tensor:
        metric = key_metric(attention.keys, attention.num_heads)
        plan = bipartite_soft_matching(metric, r, protect_first=True, order=self.tome_token_order)
        y, sizes = merge_weighted_average(x, tokens.sizes, plan)
        tokens.update(attention.layer, plan.src - 1, plan.keep[:, 1:] - 1, plan.dst - 1, sizes[:, 1:])
        return y


register(
    MethodSpec(
        "tome",
        ToMeConfig,
        (Stage.VISION_ENCODER,),
        "bipartite soft matching with size tracking and proportional attention in every CLIP layer (ToMe)",
    )
)
