"""FasterVLM (arXiv 2412.01818 v1): keep the ``T`` patches with the highest [CLS] attention.

Score: the head-mean [CLS]->patch attention of the encoder layer whose output LLaVA projects (layer 22 of
CLIP-L for ``vision_feature_layer=-2``, i.e. ``attentions[-2]``: the spec's "penultimate" layer). Selection:
top-``T`` per image, kept in raster order, before the projector (upstream prunes after the per-token projector,
which is the same). ``T`` is the number of visual tokens the LLM gets per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from llava.compression import scoring
from llava.compression.pre_llm import (
    PreLLMMethod,
    Reduction,
    VisionSignals,
    check_budget,
    check_choice,
    check_feature_layer,
    check_int,
    selection_reduction,
)
from llava.compression.registry import MethodSpec, ModelGeometry, Stage, option, register
from llava.compression.selection import topk_indices

BUDGET_HELP = "visual tokens per image given to the LLM"


def cls_patch_scores(signals: VisionSignals, layer: int, head_reduction: str = "mean") -> torch.Tensor:
    """``[B, N]`` fp32: the [CLS]->patch attention of ``layer`` reduced over heads."""
    return scoring.patch_scores(scoring.reduce_heads(signals.cls_attention(layer), head_reduction))


@dataclass
class FasterVLMConfig(PreLLMMethod):
    """Top-T patches by the feature layer's head-mean [CLS] attention."""

    name: ClassVar[str] = "fastervlm"

    visual_token_num: int = option(64, "--visual-token-num", BUDGET_HELP)
    head_reduction: str = option(
        "mean",
        "--head-reduction",
        "how [CLS] attention is reduced over heads",
        choices=scoring.HEAD_REDUCTIONS,
    )

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        check_choice("--head-reduction", self.head_reduction, scoring.HEAD_REDUCTIONS)

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)
        check_feature_layer(geometry, self.name)

    def probe_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return (geometry.feature_layer,)

    def reduce(self, signals: VisionSignals) -> Reduction:
        scores = cls_patch_scores(signals, signals.feature_layer, self.head_reduction)
        return selection_reduction(signals.patches, topk_indices(scores, self.visual_token_num))


register(
    MethodSpec(
        "fastervlm",
        FasterVLMConfig,
        (Stage.PRE_LLM,),
        "top-T patches by the feature layer's head-mean [CLS] attention (FasterVLM)",
        requires=frozenset({"cls"}),  # scores patches by the [CLS] token's attention
    )
)
