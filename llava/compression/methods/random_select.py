"""Random pruning baseline: ``T`` patches drawn uniformly at random, kept in raster order.

Reproducible and batch-independent: each image's draw is seeded by ``--seed`` combined with a digest of the
image's pixels, so the same image and seed always keep the same patches whatever the batch, and different images
get different draws. Without pixel digests (a bare reducer call) every image uses ``--seed`` alone.
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
    check_int,
    selection_reduction,
)
from llava.compression.primitives import check_k
from llava.compression.registry import MethodSpec, ModelGeometry, Stage, option, register

# -- algorithm (pure functions) ----------------------------------------------------------------------------------


def random_indices(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices drawn uniformly from ``range(n)`` with ``generator``; ascending ``[k]``."""
    check_k(k, n)
    return torch.randperm(n, generator=generator)[:k].sort().values



# -- config ------------------------------------------------------------------------------------------------------


def image_seed(seed: int, image_key: int | None) -> int:
    """The generator seed of one image (63-bit)."""
    if image_key is None:
        return seed
    return (seed * 0x9E3779B97F4A7C15 + image_key) % (1 << 63)


@dataclass(frozen=True)
class RandomConfig(PreLLMMethod):
    """``T`` uniformly random patches per image."""

    name: ClassVar[str] = "random"
    needs_image_keys: ClassVar[bool] = True

    visual_token_num: int = option(64, "--visual-token-num", "visual tokens per image given to the LLM")
    seed: int = option(0, "--seed", "random: seed of the per-image draws")

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        check_int("--seed", self.seed, 0)

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the budget."""
        return [self.visual_token_num] * geometry.llm_layers

    def reduce(self, signals: VisionSignals) -> Reduction:
        keys = signals.image_keys or [None] * signals.batch_size
        picks = []
        for key in keys:
            g = torch.Generator().manual_seed(image_seed(self.seed, key))
            picks.append(random_indices(signals.num_patches, self.visual_token_num, g))
        indices = torch.stack(picks).to(signals.tokens.device)
        return selection_reduction(signals.patches, indices)


register(
    MethodSpec("random", RandomConfig, (Stage.PRE_LLM,), "T uniformly random patches per image (seeded)")
)
