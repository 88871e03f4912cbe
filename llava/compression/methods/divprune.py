"""DivPrune (arXiv 2503.02175): the ``T`` most mutually diverse visual tokens (greedy max-min).

Distance: ``1 - cos`` between tokens; by default between the *projected* tokens (upstream works on the LLM input
embeddings of the image span), ``--divprune-space vision`` uses the vision features instead. Greedy max-min
selection (see :func:`max_min_diversity` below), kept in raster order. ``T`` is the number
of visual tokens the LLM gets (upstream's ratio ``r`` is ``T = round(r * 576)``).

Precision (``--divprune-precision``): ``fp32`` (default) computes the distances in fp32 and takes the first pick
as the token whose nearest *other* token is farthest. ``fp16`` reproduces upstream's GPU run, whose distance
matrix is computed in fp16 from the fp16 embeddings (:func:`cosine_distance_fp16`;
only a few thousand distinct values among 576 x 576, so many near-ties collapse and the first index wins), with
upstream's literal first-pick rule (second-smallest entry of each column, diagonal included). The picks differ.
"""

from __future__ import annotations

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
    selection_reduction,
)
from llava.compression.primitives import check_k
from llava.compression.registry import MethodSpec, ModelGeometry, Stage, option, register

SPACES = ("projected", "vision")
PRECISIONS = ("fp32", "fp16")


# -- algorithm (pure functions) ----------------------------------------------------------------------------------


def cosine_distance_fp16(x: torch.Tensor) -> torch.Tensor:
    """DivPrune's upstream distance matrix, computed as its fp16 GPU run does: ``[N, C]`` -> ``[N, N]`` fp16.

    Upstream (``pairwise_cosine_similarity`` on the fp16 LLM input embeddings) divides every row by its norm, takes
    ``torch.mm`` of the result with its transpose and subtracts it from 1, each step in fp16. Emulated here step by
    step so that CPU and GPU agree: the row norm is accumulated in fp32 and rounded to fp16 (what PyTorch's fp16
    ``norm`` does), the division is rounded to fp16, the matrix product multiplies the fp16 entries exactly and
    accumulates in fp32 before one rounding to fp16 (a cuBLAS fp16 GEMM with fp32 accumulation; only the summation
    order can differ), and ``1 - s`` is rounded to fp16. Values are exact fp16 numbers, so many entries tie.
    """
    half = x.to(torch.float16)
    norm = half.float().norm(dim=-1, keepdim=True).to(torch.float16)
    unit = (half.float() / norm.float()).to(torch.float16)
    similarity = (unit.float() @ unit.float().T).to(torch.float16)
    return (1.0 - similarity.float()).to(torch.float16)


FIRST_PICK_RULES = ("nearest-other", "second-smallest")


def max_min_diversity(distance: torch.Tensor, k: int, first_pick: str = "nearest-other") -> torch.Tensor:
    """DivPrune's greedy max-min diverse subset, in pick order: ``[N, N]`` distances -> ``[k]`` indices.

    First pick: the token whose nearest other token is farthest (``argmax_j min_{i != j} D_ij``); with
    ``first_pick="second-smallest"`` upstream's literal rule, the second-smallest entry of each column with the
    diagonal included (the same unless a diagonal entry is not the column's smallest, which happens with rounded
    fp16 distances). Then repeatedly the token farthest from the picked set (``argmax_j min_{i in S} D_ij``). Picked
    tokens are never picked again (the reference can re-pick one when no remaining token is farther from the set
    than a picked token's own rounded diagonal entry); ties -> lower index. Comparisons run on the values as given
    (fp16 distances compare as fp16 numbers).
    """
    if first_pick not in FIRST_PICK_RULES:
        raise ValueError(f"first_pick must be one of {', '.join(FIRST_PICK_RULES)}, got {first_pick!r}")
    n = distance.shape[-1]
    check_k(k, n)
    d = distance.float()
    picks = torch.empty(k, dtype=torch.long, device=d.device)
    if k == 0:
        return picks
    if n == 1:
        nearest = torch.zeros(1, device=d.device)
    elif first_pick == "second-smallest":
        nearest = torch.sort(d, dim=0).values[1]
    else:
        nearest = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf")).amin(dim=0)
    first = int(torch.argmax(nearest))
    picks[0] = first
    score = d[first].clone()
    taken = torch.zeros(n, dtype=torch.bool, device=d.device)
    taken[first] = True
    for i in range(1, k):
        j = int(torch.argmax(score.masked_fill(taken, float("-inf"))))
        picks[i] = j
        taken[j] = True
        score = torch.minimum(score, d[j])
    return picks



def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_i, x_j)`` in fp32: ``[N, C]`` -> ``[N, N]``."""
    xn = F.normalize(x.float(), dim=-1)
    return 1.0 - xn @ xn.T



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
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

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the budget."""
        return [self.visual_token_num] * geometry.llm_layers

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
