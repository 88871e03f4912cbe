"""Spatial average pooling baseline: the patch grid average-pooled to ``h x w = T`` cells.

``T`` must factor as ``h * w`` with ``h`` and ``w`` no larger than the patch grid; of the factorisations the one
closest to the grid's aspect ratio is used (64 -> 8x8, 144 -> 12x12, 128 -> 8x16, 576 -> 24x24 = no-op). Windows
follow PyTorch's adaptive average pooling (they overlap by one patch when the sizes do not divide).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
import torch.nn.functional as F

from llava.compression.pre_llm import PreLLMMethod, Reduction, VisionSignals, check_budget, check_int
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

# -- algorithm (pure functions) ----------------------------------------------------------------------------------


def pool_to_grid(x: torch.Tensor, grid: tuple[int, int], out_grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool raster-ordered patch features to a smaller grid (PyTorch adaptive pooling windows).

    ``[B, R*Cg, C]`` on a ``(R, Cg)`` grid -> ``[B, h*w, C]`` on ``out_grid = (h, w)``, raster order.
    """
    b, n, c = x.shape
    rows, cols = grid
    if rows * cols != n:
        raise ValueError(f"{n} tokens do not form a {rows}x{cols} grid")
    img = x.float().transpose(1, 2).reshape(b, c, rows, cols)
    pooled = F.adaptive_avg_pool2d(img, out_grid)  # [B, C, h, w]
    return pooled.flatten(2).transpose(1, 2).to(x.dtype)


def pool_windows(size: int, out: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each adaptive-pooling window along one axis (PyTorch's rule)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def pool_cells(grid: tuple[int, int], out_grid: tuple[int, int]) -> torch.Tensor:
    """Output cell of every patch for drawing: the non-overlapping partition ``floor(r*h/R), floor(c*w/Cg)``.

    Adaptive windows overlap by one patch when the sizes do not divide; each patch is shown in one cell. ``[N]``.
    """
    (rows, cols), (h, w) = grid, out_grid
    r = torch.arange(rows) * h // rows
    c = torch.arange(cols) * w // cols
    return (r[:, None] * w + c[None, :]).flatten()


def pool_centres(grid: tuple[int, int], out_grid: tuple[int, int]) -> torch.Tensor:
    """Raster index of the patch at the centre of each pooling window, ascending ``[h*w]``."""
    (rows, cols), (h, w) = grid, out_grid
    rc = torch.tensor([(s + e - 1) // 2 for s, e in pool_windows(rows, h)])
    cc = torch.tensor([(s + e - 1) // 2 for s, e in pool_windows(cols, w)])
    return (rc[:, None] * cols + cc[None, :]).flatten()



# -- config ------------------------------------------------------------------------------------------------------


def pool_grid(budget: int, grid: tuple[int, int]) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w = budget`` fitting ``grid`` and closest to its aspect ratio (ties -> smaller h)."""
    rows, cols = grid
    pairs = [(h, budget // h) for h in range(1, rows + 1) if budget % h == 0 and budget // h <= cols]
    if not pairs:
        return None

    def mismatch(hw: tuple[int, int]) -> Fraction:
        r = Fraction(hw[0] * cols, hw[1] * rows)  # (h / w) / (rows / cols), exact
        return max(r, 1 / r)

    return min(pairs, key=lambda hw: (mismatch(hw), hw[0]))


@dataclass(frozen=True)
class PoolConfig(PreLLMMethod):
    """Average pooling of the patch grid to ``T`` cells."""

    name: ClassVar[str] = "pool"

    visual_token_num: int = option(64, "--visual-token-num", "visual tokens per image given to the LLM")

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)
        if pool_grid(self.visual_token_num, geometry.grid) is None:
            rows, cols = geometry.grid
            near = sorted(
                {h * w for h in range(1, rows + 1) for w in range(1, cols + 1)},
                key=lambda t: (abs(t - self.visual_token_num), t),
            )[:2]
            raise CompressionConfigError(
                f"pool needs --visual-token-num = h * w with h <= {rows}, w <= {cols}; "
                f"{self.visual_token_num} is not (nearest: {', '.join(map(str, sorted(near)))})"
            )

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the budget (an ``h x w`` grid)."""
        return [self.visual_token_num] * geometry.llm_layers

    def reduce(self, signals: VisionSignals) -> Reduction:
        out_grid = pool_grid(self.visual_token_num, signals.grid)
        if out_grid is None:
            raise ValueError(f"{self.visual_token_num} tokens do not fit a pooling grid on {signals.grid}")
        pooled = pool_to_grid(signals.patches, signals.grid, out_grid)
        dev = pooled.device
        centres = pool_centres(signals.grid, out_grid).to(dev)
        cells = pool_cells(signals.grid, out_grid).to(dev)
        info = {"pool_grid": list(out_grid)}
        return Reduction(
            features=list(pooled),
            kept_indices=[centres] * len(pooled),
            groups=[cells] * len(pooled),
            info=[dict(info) for _ in range(len(pooled))],
        )


register(
    MethodSpec("pool", PoolConfig, (Stage.PRE_LLM,), "average pooling of the patch grid to h x w = T tokens")
)
