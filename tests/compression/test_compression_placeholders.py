"""Placeholder-run shrinking on hand-written id tensors."""

from __future__ import annotations

import pytest
import torch

from llava.compression import find_image_spans, restore_prompts, shrink_placeholder_runs

IMG, P = 9, 0  # image token, pad


def test_shrink_left_padded_batch_with_text_only_row():
    ids = torch.tensor(
        [
            [P, P, 1, IMG, IMG, IMG, IMG, 2],
            [5, 6, 7, 8, 3, 4, 2, 1],  # text only
            [P, 3, IMG, IMG, IMG, IMG, 4, 5],
        ]
    )
    mask = (ids != P).long()
    mask[1] = 1
    new_ids, new_mask = shrink_placeholder_runs(ids, mask, IMG, [2, 1], P)
    assert new_ids.tolist() == [
        [P, P, P, P, 1, IMG, IMG, 2],
        [5, 6, 7, 8, 3, 4, 2, 1],
        [P, P, P, P, 3, IMG, 4, 5],
    ]
    assert new_mask.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [1] * 8, [0, 0, 0, 0, 1, 1, 1, 1]]


def test_shrink_handles_right_padding_growth_and_no_mask():
    ids = torch.tensor([[1, IMG, IMG, 2, P, P], [3, 4, IMG, IMG, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    new_ids, new_mask = shrink_placeholder_runs(ids, mask, IMG, [3, 1], P)
    assert new_ids.tolist() == [[1, IMG, IMG, IMG, 2], [3, 4, IMG, 5, 6]]
    assert new_mask.tolist() == [[1] * 5, [1] * 5]
    new_ids, new_mask = shrink_placeholder_runs(ids[1:], None, IMG, [0], 7)
    assert new_ids.tolist() == [[3, 4, 5, 6]] and new_mask.tolist() == [[1, 1, 1, 1]]


def test_adjacent_and_multiple_runs():
    ids = torch.tensor([[1, IMG, IMG, IMG, IMG, 2, IMG, IMG, 3]])
    spans = find_image_spans(ids, None, IMG, 3, tokens_per_image=2)
    assert [(s.row, s.start, s.end) for s in spans] == [(0, 1, 3), (0, 3, 5), (0, 6, 8)]
    new_ids, _ = shrink_placeholder_runs(ids, None, IMG, [1, 0, 2], P, tokens_per_image=2)
    assert new_ids.tolist() == [[1, IMG, 2, IMG, IMG, 3]]
    with pytest.raises(ValueError, match="placeholder run"):
        find_image_spans(ids, None, IMG, 3)  # without the run length the first run is one image
    with pytest.raises(ValueError):
        shrink_placeholder_runs(ids, None, IMG, [1], P)


def test_restore_prompts():
    prompts = torch.tensor([[P, 1, IMG, IMG], [2, 3, IMG, IMG]])
    seqs = torch.tensor([[1, IMG, 7, 8], [2, 3, 5, 6]])  # shrunk prompts of length 2... + 2 new tokens
    out = restore_prompts(seqs, prompts, 2)
    assert out.tolist() == [[P, 1, IMG, IMG, 7, 8], [2, 3, IMG, IMG, 5, 6]]
    beams = restore_prompts(torch.tensor([[1, 7], [1, 8], [2, 5], [2, 6]]), prompts, 1)
    assert beams[:, -1].tolist() == [7, 8, 5, 6] and beams[1, :4].tolist() == [P, 1, IMG, IMG]
