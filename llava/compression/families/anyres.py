"""LLaVA-NeXT (LLaVA-1.6) anyres geometry: which crop grid an image gets and how many image tokens it becomes.

Two settings (seed_methods spec, 2.2 item 7 and ambiguity 5):

* ``"anyres"`` (default, LLaVA-1.6 as released): the grid is chosen from ``image_grid_pinpoints`` by
  ``select_best_resolution``; the base image (one crop's grid) comes first, then the crops' features, merged into one
  map, cut back to the image's aspect ratio (``unpad``) and ending every row with ``image_newline``
  (``mm_patch_merge_type = spatial_unpad``).
* ``"fixed-672"`` (FasterVLM's NeXT numbers): the grid is fixed at 2 x 2 crops (672 x 672 for a 336 tower) and
  the crops are merged row-major without unpadding or newline tokens (``mm_patch_merge_type = spatial``), so every
  image gives the same count: 5 x 576 = 2880 on LLaVA-1.6-7B.

Sizes are ``(height, width)`` in pixels throughout, as transformers has them.
"""

from __future__ import annotations

from collections.abc import Sequence

ANYRES = "anyres"
FIXED_672 = "fixed-672"
GRID_MODES = (ANYRES, FIXED_672)


class GridModeError(ValueError):
    """An unknown LLaVA-NeXT grid mode."""


def check_grid_mode(mode: str) -> str:
    if mode not in GRID_MODES:
        raise GridModeError(f"unknown LLaVA-NeXT grid mode {mode!r}; choose one of {list(GRID_MODES)} (--next-grid)")
    return mode


def grid_pinpoints_for(mode: str, pinpoints: Sequence[Sequence[int]], crop_size: int) -> list[list[int]]:
    """The ``image_grid_pinpoints`` a mode uses: the checkpoint's for ``anyres``, one 2 x 2 grid for ``fixed-672``."""
    if check_grid_mode(mode) == FIXED_672:
        return [[2 * crop_size, 2 * crop_size]]
    return [list(p) for p in pinpoints]


def crop_grid(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]], crop_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of crops for an image of ``image_size`` = ``(height, width)`` (LLaVA-1.6's
    ``get_anyres_image_grid_shape``: the best-fitting pinpoint divided by the crop size)."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = select_best_resolution(tuple(int(s) for s in image_size), [list(p) for p in pinpoints])
    return height // crop_size, width // crop_size


def unpadded_grid(image_size: Sequence[int], grid_height: int, grid_width: int) -> tuple[int, int]:
    """``(rows, cols)`` of the merged crop feature map after LLaVA-1.6's ``unpad_image``: the map is cut back to the
    image's aspect ratio, removing the rows (or columns) that only the letterbox padding filled."""
    original_height, original_width = (int(s) for s in image_size)
    if original_width / original_height > grid_width / grid_height:
        new_height = int(round(original_height * (grid_width / original_width), 7))
        padding = (grid_height - new_height) // 2
        return grid_height - 2 * padding, grid_width
    new_width = int(round(original_width * (grid_height / original_height), 7))
    padding = (grid_width - new_width) // 2
    return grid_height, grid_width - 2 * padding


def image_token_count(
    image_size: Sequence[int],
    *,
    mode: str = ANYRES,
    pinpoints: Sequence[Sequence[int]],
    crop_size: int,
    patch_size: int,
) -> int:
    """Image tokens of one image of ``image_size`` = ``(height, width)`` on a LLaVA-NeXT model whose crops are
    ``crop_size`` px with ``patch_size`` px patches (the base image plus the crops, [CLS] dropped).

    ``anyres``: ``side^2`` (base) + the unpadded map + one newline per row. ``fixed-672``: ``5 * side^2``.
    """
    side = crop_size // patch_size
    rows, cols = crop_grid(image_size, grid_pinpoints_for(mode, pinpoints, crop_size), crop_size)
    if mode == FIXED_672:
        return side * side * (1 + rows * cols)
    height, width = unpadded_grid(image_size, rows * side, cols * side)
    return side * side + height * width + height


def crop_count(image_size: Sequence[int], *, mode: str = ANYRES, pinpoints: Sequence[Sequence[int]], crop_size: int) -> int:
    """Crops the tower encodes for one image: the base image plus ``rows * cols`` grid crops."""
    rows, cols = crop_grid(image_size, grid_pinpoints_for(mode, pinpoints, crop_size), crop_size)
    return 1 + rows * cols
