"""FasterVLM (arXiv 2412.01818 v1): keep the ``T`` patches with the highest [CLS] attention.

Score: the head-mean [CLS]->patch attention of the encoder layer whose output LLaVA projects (layer 22 of
CLIP-L for ``vision_feature_layer=-2``, i.e. ``attentions[-2]``: the spec's "penultimate" layer). Selection:
top-``T`` per image, kept in raster order, before the projector (upstream prunes after the per-token projector,
which is the same). ``T`` is the number of visual tokens the LLM gets per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
from llava.compression.primitives import HEAD_REDUCTIONS, cls_patch_scores, topk_indices
from llava.compression.registry import MethodSpec, ModelGeometry, Stage, option, register

BUDGET_HELP = "visual tokens per image given to the LLM"



@dataclass(frozen=True)
class FasterVLMConfig(PreLLMMethod):
    """Top-T patches by the feature layer's head-mean [CLS] attention."""

    name: ClassVar[str] = "fastervlm"

    visual_token_num: int = option(64, "--visual-token-num", BUDGET_HELP)
    head_reduction: str = option(
        "mean",
        "--head-reduction",
        "how [CLS] attention is reduced over heads",
        choices=HEAD_REDUCTIONS,
    )

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        check_choice("--head-reduction", self.head_reduction, HEAD_REDUCTIONS)

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)
        check_feature_layer(geometry, self.name)

    def probe_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return (geometry.feature_layer,)

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the budget."""
        return [self.visual_token_num] * geometry.llm_layers

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
