"""Image placeholder runs in tokenised prompts (pure functions on id tensors).

A processor expands every ``<image>`` to a run of ``num_patches`` placeholder ids (576 for LLaVA-1.5). When a
method gives the LLM ``k_i`` tokens for image ``i``, that image's run must hold exactly ``k_i`` placeholders.
Images are numbered in row-major order over the batch (row 0's images first, left to right), which is the
order the model scatters image features into the placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSpan:
    """Placeholder run of one image: ``input_ids[row, start:end]``."""

    row: int
    start: int
    end: int


def _maximal_runs(ids: torch.Tensor, valid: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    is_img = ((ids == image_token_id) & valid).tolist()
    runs, start = [], None
    for j, flag in enumerate(is_img + [False]):
        if flag and start is None:
            start = j
        elif not flag and start is not None:
            runs.append((start, j))
            start = None
    return runs


def find_image_spans(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int,
    num_images: int,
    tokens_per_image: int | None = None,
) -> list[ImageSpan]:
    """The placeholder run of each of ``num_images`` images, in scatter order.

    Every maximal run of ``image_token_id`` (among attended positions) is one image. When that does not give
    ``num_images`` runs and ``tokens_per_image`` is set, runs whose length is a multiple of it are split (two
    ``<image>`` tags with nothing in between). Otherwise a ``ValueError`` explains the mismatch.
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    runs = [
        (row, s, e)
        for row in range(input_ids.shape[0])
        for s, e in _maximal_runs(input_ids[row], mask[row], image_token_id)
    ]
    if len(runs) == num_images:
        return [ImageSpan(*r) for r in runs]
    if tokens_per_image and all((e - s) % tokens_per_image == 0 for _, s, e in runs):
        split = [
            ImageSpan(row, p, p + tokens_per_image)
            for row, s, e in runs
            for p in range(s, e, tokens_per_image)
        ]
        if len(split) == num_images:
            return split
    lengths = [e - s for _, s, e in runs]
    raise ValueError(
        f"{num_images} image(s) but the prompts hold {len(runs)} placeholder run(s) of image token "
        f"{image_token_id} with lengths {lengths}"
    )


def shrink_placeholder_runs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int,
    counts: Sequence[int],
    pad_token_id: int | None,
    *,
    tokens_per_image: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize image ``i``'s placeholder run to ``counts[i]`` tokens and re-pad the batch on the left.

    Args:
        input_ids: ``[B, L]`` prompts (any padding side; padding is where ``attention_mask`` is 0).
        attention_mask: ``[B, L]`` or ``None`` (no padding).
        image_token_id: the placeholder id.
        counts: tokens per image, one per image in scatter order (see :func:`find_image_spans`).
        pad_token_id: id written into the new padding (``None`` -> 0; padding is masked out anyway).
        tokens_per_image: optional run length of one image, to split adjacent runs.

    Returns:
        ``(input_ids [B, L'], attention_mask [B, L'])``, left-padded, ``L'`` = the longest new row. Rows without
        images keep their tokens unchanged (only their padding may change).
    """
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"negative placeholder count in {counts}")
    spans = find_image_spans(input_ids, attention_mask, image_token_id, len(counts), tokens_per_image)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    by_row: dict[int, list[tuple[ImageSpan, int]]] = {}
    for span, count in zip(spans, counts, strict=True):
        by_row.setdefault(span.row, []).append((span, count))
    rows: list[torch.Tensor] = []
    for r in range(input_ids.shape[0]):
        ids = input_ids[r]
        pieces, cursor = [], 0
        for span, count in by_row.get(r, []):
            pieces.append(ids[cursor : span.start][mask[r, cursor : span.start]])
            pieces.append(ids.new_full((count,), image_token_id))
            cursor = span.end
        pieces.append(ids[cursor:][mask[r, cursor:]])
        rows.append(torch.cat(pieces))
    length = max((len(t) for t in rows), default=0)
    pad = 0 if pad_token_id is None else int(pad_token_id)
    new_ids = input_ids.new_full((len(rows), length), pad)
    dtype = attention_mask.dtype if attention_mask is not None else torch.long
    new_mask = torch.zeros((len(rows), length), dtype=dtype, device=input_ids.device)
    for r, t in enumerate(rows):
        if len(t):
            new_ids[r, length - len(t) :] = t
            new_mask[r, length - len(t) :] = 1
    return new_ids, new_mask


def restore_prompts(sequences: torch.Tensor, prompts: torch.Tensor, shrunk_length: int) -> torch.Tensor:
    """Put the caller's original prompts back in front of generated tokens.

    ``sequences`` ``[B*n, shrunk_length + T]`` came from a shrunk prompt; ``prompts`` ``[B, L]`` are the original
    ones (``n`` = return sequences per prompt). Returns ``[B*n, L + T]``: what an unmodified model's ``generate``
    returns, so callers can keep slicing new tokens at ``L``.
    """
    n = sequences.shape[0] // prompts.shape[0]
    return torch.cat(
        [prompts.repeat_interleave(n, dim=0).to(sequences.device), sequences[:, shrunk_length:]], dim=1
    )
