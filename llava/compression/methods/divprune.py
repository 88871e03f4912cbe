"""DivPrune (arXiv 2503.02175): the ``T`` most mutually diverse visual tokens (greedy max-min).

Distance: ``1 - cos`` between tokens; by default between the *projected* tokens (upstream works on the LLM input
embeddings of the image span), ``--divprune-space vision`` uses the vision features instead. Greedy max-min
selection (see :func:`llava.compression.selection.max_min_diversity`), kept in raster order. ``T`` is the number
of visual tokens the LLM gets (upstream's ratio ``r`` is ``T = round(r * 576)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from llava.compression.pre_llm import (
    PreLLMMethod,
    Reduction,
    VisionSignals,
    check_budget,
    check_choice,
    check_int,
    selection_reduction,
)
from llava.compression.registry import MethodSpec, ModelGeometry, Stage, option, register
from llava.compression.selection import cosine_distance, max_min_diversity

SPACES = ("projected", "vision")


@dataclass
class DivPruneConfig(PreLLMMethod):
    """Greedy max-min diverse subset of ``T`` tokens."""

    name: ClassVar[str] = "divprune"

    visual_token_num: int = option(64, "--visual-token-num", "visual tokens per image given to the LLM")
    divprune_space: str = option(
        "projected",
        "--divprune-space",
        "DivPrune: distances between projected or vision tokens",
        choices=SPACES,
    )

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        check_choice("--divprune-space", self.divprune_space, SPACES)

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)

    def reduce(self, signals: VisionSignals) -> Reduction:
        projected = self.divprune_space == "projected"
        if projected:
            if signals.project is None:
                raise RuntimeError("divprune --divprune-space projected needs the model's projector")
            tokens = signals.project(signals.patches)
        else:
            tokens = signals.patches
        picks = [max_min_diversity(cosine_distance(t), self.visual_token_num) for t in tokens]
        indices = torch.stack(picks).sort(dim=-1).values
        out = selection_reduction(tokens, indices)
        out.projected = projected
        return out


register(
    MethodSpec(
        "divprune",
        DivPruneConfig,
        (Stage.PRE_LLM,),
        "greedy max-min diverse subset of T tokens (DivPrune)",
    )
)
