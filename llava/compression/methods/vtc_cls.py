"""VTC-CLS (arXiv 2412.05819): FasterVLM's [CLS] score ensembled over the last encoder layers.

Score: for every encoder layer ``l`` in ``start_layer .. feature_layer`` (``20 .. 22`` by default on CLIP-L:
the paper's K = 3, upstream ``--layer 20``), the head-mean [CLS]->patch attention; the per-layer scores are
combined by ``--ensemble`` (mean = upstream's sum for ranking). Top-``U`` per image, raster order, before the
projector. With ``start_layer = feature_layer`` (22) it keeps exactly FasterVLM's tokens. ``start_layer`` is a
0-based *vision-encoder* layer, not an LLM layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

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
from llava.compression.primitives import (
    HEAD_REDUCTIONS,
    cls_patch_scores,
    reduce_dim,
    topk_indices,
)
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

BUDGET_HELP = "visual tokens per image given to the LLM"


# -- algorithm (pure functions) -----------------------------------------------------------------------------------


LAYER_ENSEMBLES = ("mean", "sum", "max", "min")


def ensemble_layers(scores: Sequence[torch.Tensor] | torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Combine per-layer scores: ``L x [B, N]`` (or stacked ``[L, B, N]``) -> ``[B, N]`` fp32.

    ``mean`` and ``sum`` rank tokens identically; ``max`` / ``min`` are VTC-CLS's alternatives.
    """
    stacked = scores if isinstance(scores, torch.Tensor) else torch.stack(list(scores))
    if stacked.shape[0] == 0:
        raise ValueError("ensemble of zero layers")
    return reduce_dim(stacked.float(), dim=0, how=how, choices=LAYER_ENSEMBLES)



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VTCCLSConfig(PreLLMMethod):
    """Top-U patches by [CLS] attention ensembled over encoder layers ``start_layer .. feature_layer``."""

    name: ClassVar[str] = "vtc-cls"

    visual_token_num: int = option(64, "--visual-token-num", BUDGET_HELP)
    start_layer: int = option(
        20,
        "--start-layer",
        "first (0-based) vision-encoder layer of the [CLS]-attention ensemble; it ends at the feature layer",
    )
    ensemble: str = option(
        "mean", "--ensemble", "how per-layer scores are combined", choices=LAYER_ENSEMBLES
    )
    head_reduction: str = option(
        "mean",
        "--head-reduction",
        "how [CLS] attention is reduced over heads",
        choices=HEAD_REDUCTIONS,
    )

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        check_int("--start-layer", self.start_layer, 0)
        check_choice("--ensemble", self.ensemble, LAYER_ENSEMBLES)
        check_choice("--head-reduction", self.head_reduction, HEAD_REDUCTIONS)

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)
        last = check_feature_layer(geometry, self.name)
        if self.start_layer > last:
            raise CompressionConfigError(
                f"--start-layer must be between 0 and {last} (the feature layer, vision_feature_layer="
                f"{geometry.vision_feature_layer} of {geometry.vision_layers} encoder layers), got {self.start_layer}"
            )

    def probe_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return tuple(range(self.start_layer, geometry.feature_layer + 1))

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the budget."""
        return [self.visual_token_num] * geometry.llm_layers

    def reduce(self, signals: VisionSignals) -> Reduction:
        layers = range(self.start_layer, signals.feature_layer + 1)
        per_layer = [cls_patch_scores(signals, layer, self.head_reduction) for layer in layers]
        scores = ensemble_layers(per_layer, self.ensemble)
        return selection_reduction(signals.patches, topk_indices(scores, self.visual_token_num))


register(
    MethodSpec(
        "vtc-cls",
        VTCCLSConfig,
        (Stage.PRE_LLM,),
        "top-U patches by [CLS] attention ensembled over the last encoder layers (VTC-CLS)",
        aliases=("vtc_cls", "vtccls"),
        requires=frozenset({"cls"}),  # scores patches by the [CLS] token's attention
    )
)
