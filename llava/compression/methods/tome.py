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

from llava.compression import tome
from llava.compression.ficoco import merge_schedule
from llava.compression.pre_llm import check_budget, check_choice, check_feature_layer, check_int
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


@dataclass
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
        choices=tome.TOKEN_ORDERS,
    )

    def __post_init__(self) -> None:
        if self.visual_token_num is None and self.tome_r is None:
            self.visual_token_num = DEFAULT_BUDGET
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)
        if self.tome_r is not None:
            check_int("--tome-r", self.tome_r, 0)
        if not isinstance(self.tome_prop_attn, bool):
            raise CompressionConfigError(f"--tome-prop-attn must be a boolean, got {self.tome_prop_attn!r}")
        check_choice("--tome-token-order", self.tome_token_order, tome.TOKEN_ORDERS)

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
                cap=lambda n: tome.max_merges(n + 1, protected=1),
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
        metric = tome.key_metric(attention.keys, attention.num_heads)
        plan = tome.bipartite_soft_matching(metric, r, protect_first=True, order=self.tome_token_order)
        y, sizes = tome.merge_weighted_average(x, tokens.sizes, plan)
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
