"""Position ids of the tokens a decoder runs on, as one object for ``[B, T]`` (RoPE) and ``[3, B, T]`` (M-RoPE).

The in-LLM engine gathers, pads and renumbers position ids when it drops tokens; it does so through
:class:`Positions` so that a family with multi-axis positions (Qwen2.5-VL's ``[3, B, T]``: temporal, height, width)
only changes what the family supplies. The token axis is always the last one, the batch axis the one before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Positions:
    """``ids``: ``[B, T]`` or ``[A, B, T]`` long (``A`` position axes, e.g. 3 for M-RoPE)."""

    ids: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.dim() not in (2, 3):
            raise ValueError(f"position ids must be [B, T] or [A, B, T], got shape {tuple(self.ids.shape)}")

    @property
    def ndim(self) -> int:
        return self.ids.dim()

    @property
    def length(self) -> int:
        return self.ids.shape[-1]

    def expand(self, batch: int, length: int) -> Positions:
        """Broadcast a shared row (``[1, T]``) to ``batch`` rows."""
        return Positions(self.ids.expand(*self.ids.shape[:-2], batch, length))

    def gather(self, index: torch.Tensor) -> Positions:
        """``index``: ``[B, T']`` token indices per row -> the positions of those tokens."""
        return Positions(torch.gather(self.ids, -1, index.expand(*self.ids.shape[:-2], *index.shape)))

    def take(self, row: int, index: torch.Tensor) -> torch.Tensor:
        """Positions of tokens ``index`` of one row: ``[n]`` (or ``[A, n]``)."""
        return self.ids[..., row, index]

    def slots(self, count: int) -> torch.Tensor:
        """A zero block for ``count`` extra tokens per row (filled with :meth:`take` results, then :meth:`cat`)."""
        return self.ids.new_zeros(*self.ids.shape[:-1], count)

    def cat(self, extra: torch.Tensor) -> Positions:
        """Append extra tokens (a block from :meth:`slots`) after the current ones."""
        return Positions(torch.cat([self.ids, extra], dim=-1))

    def _per_row(self, x: torch.Tensor) -> torch.Tensor:
        # a per-row quantity [B] broadcast against ids
        return x[:, None] if self.ndim == 2 else x[None, :, None]

    def end(self, valid: torch.Tensor) -> torch.Tensor:
        """``[B]`` one past the largest position of each row's valid tokens (every axis)."""
        last = self.ids.masked_fill(~valid.expand_as(self.ids), -1).amax(dim=-1)
        return (last if self.ndim == 2 else last.amax(dim=0)) + 1

    def shifted(self, shift: torch.Tensor) -> Positions:
        """Every position of row ``b`` minus ``shift[b]``."""
        return Positions(self.ids - self._per_row(shift))

    def renumbered(self, valid: torch.Tensor, start: torch.Tensor) -> Positions:
        """Valid tokens of row ``b`` get ``start[b], start[b] + 1, ..`` in order (others keep theirs): the
        ``compact`` convention, defined for 1-D positions only."""
        if self.ndim != 2:
            raise NotImplementedError("'compact' renumbering of multi-axis positions is not defined")
        ranks = valid.long().cumsum(dim=1) - 1
        return Positions(torch.where(valid, start[:, None] + ranks, self.ids))

    def start(self, valid: torch.Tensor) -> torch.Tensor:
        """``[B]`` the smallest position of each row's valid tokens (1-D positions)."""
        if self.ndim != 2:
            raise NotImplementedError("'compact' renumbering of multi-axis positions is not defined")
        return self.ids.masked_fill(~valid, torch.iinfo(self.ids.dtype).max).amin(dim=1)

    @property
    def layer_ids(self) -> torch.Tensor | None:
        """What a decoder layer gets as ``position_ids``: the ids of 1-D positions; ``None`` for multi-axis ones
        (an M-RoPE decoder's layers take their rotation from ``position_embeddings`` only)."""
        return self.ids if self.ndim == 2 else None


def rope_positions(position_ids: torch.Tensor | None) -> Positions | None:
    """The rotary positions in the ``position_ids`` a decoder's ``forward`` receives, when they are multi-axis:
    an M-RoPE decoder (Qwen2.5-VL's ``Qwen2_5_VLTextModel``) takes ``[3, B, T]``, or ``[4, B, T]`` with a text row
    first that only its mask uses, and passes its layers that text row (or nothing) instead. ``None`` for 1-D ids
    (the layers receive those themselves)."""
    if position_ids is None or position_ids.dim() != 3:
        return None
    return Positions(position_ids[1:] if position_ids.shape[0] == 4 else position_ids)
