"""Positions: one object for [B, T] (RoPE) and [A, B, T] (M-RoPE) position ids, as the in-LLM engine uses them."""

from __future__ import annotations

import pytest
import torch

from llava.compression.llm.positions import Positions


def _axes():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50, (2, 6), generator=g) for _ in range(3)]


def test_multi_axis_positions_act_per_axis_like_1d_ones():
    axes = _axes()
    multi = Positions(torch.stack(axes))
    index = torch.tensor([[0, 2, 5], [1, 1, 4]])
    valid = torch.tensor([[True] * 6, [False, True, True, True, False, True]])
    shift = torch.tensor([3, -2])
    assert multi.ndim == 3 and Positions(axes[0]).ndim == 2
    for a, ids in enumerate(axes):
        one = Positions(ids)
        assert torch.equal(multi.gather(index).ids[a], one.gather(index).ids)
        assert torch.equal(multi.shifted(shift).ids[a], one.shifted(shift).ids)
        assert torch.equal(multi.take(1, torch.tensor([0, 3]))[a], one.take(1, torch.tensor([0, 3])))
        assert torch.equal(multi.cat(multi.slots(2)).ids[a], one.cat(one.slots(2)).ids)
    # the next free position of a row is past every axis
    expected = torch.stack([Positions(ids).end(valid) for ids in axes]).amax(dim=0)
    assert torch.equal(multi.end(valid), expected)


def test_shared_row_expands_and_1d_positions_renumber():
    shared = Positions(torch.arange(5)[None])
    rows = shared.expand(2, 5)
    assert rows.ids.shape == (2, 5)
    valid = torch.tensor([[False, True, True, False, True], [True] * 5])
    compact = rows.renumbered(valid, rows.start(valid))
    assert compact.ids.tolist() == [[0, 1, 2, 3, 3], [0, 1, 2, 3, 4]]  # invalid slots keep their ids
    assert rows.end(valid).tolist() == [5, 5]


def test_bad_shapes_and_undefined_renumbering_are_refused():
    with pytest.raises(ValueError, match=r"\[B, T\] or \[A, B, T\]"):
        Positions(torch.arange(4))
    multi = Positions(torch.zeros(3, 1, 4, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="compact"):
        multi.renumbered(torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, dtype=torch.long))
