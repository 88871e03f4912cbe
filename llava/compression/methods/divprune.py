"""DivPrune (arXiv 2503.02175): the ``T`` most mutually diverse visual tokens (greedy max-min).

Distance: ``1 - cos`` between tokens; by default between the *projected* tokens (upstream works on the LLM input
embeddings of the image span), ``--divprune-space vision`` uses the vision features instead. Greedy max-min
selection (see :func:`llava.compression.selection.max_min_diversity`), kept in raster order. ``T`` is the number
of visual tokens the LLM gets (upstream's ratio ``r`` is ``T = round(r * 576)``).

Precision (``--divprune-precision``): ``fp32`` (default) computes the distances in fp32 and takes the first pick
as the token whose nearest *other* token is farthest. ``fp16`` reproduces upstream's GPU run, whose distance
matrix is computed in fp16 from the fp16 embeddings (:func:`llava.compression.selection.cosine_distance_fp16`;
only a few thousand distinct values among 576 x 576, so many near-ties collapse and the first index wins), with
upstream's literal first-pick rule (second-smallest entry of each column, diagonal included). The picks differ.
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
from llava.compression.selection import cosine_distance, cosine_distance_fp16, max_min_diversity

SPACES = ("projected", "vision")
PRECISIONS = ("fp32", "fp16")


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
    divprune_precision: str = option(
        "fp32",
        "--divprune-precision",
        "DivPrune: precision of the distance matrix: fp32 (default) or fp16 (reproduces upstream's fp16 GPU "
        "computation and first-pick rule; near-ties collapse and the picks differ)",
        choices=PRECISIONS,
    )

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        check_choice("--divprune-space", self.divprune_space, SPACES)
        check_choice("--divprune-precision", self.divprune_precision, PRECISIONS)

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
        if self.divprune_precision == "fp16":
            picks = [
                max_min_diversity(cosine_distance_fp16(t), self.visual_token_num, first_pick="second-smallest")
                for t in tokens
            ]
        else:
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
