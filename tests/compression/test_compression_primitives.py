"""Scoring / selection / merging primitives on small cases worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llava.compression import primitives
from llava.compression.methods import divprune, pool, prumerge, random_select, visionzip, vtc_cls


def test_cls_attention_hand_case():
    # one image, 2 tokens ([CLS] + 1 patch), width 2, two heads of width 1
    q = torch.tensor([[[1.0, 2.0]]])
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    attn = primitives.cls_attention(q, k, num_heads=2)  # scale = 1
    # head 0: logits (1*1, 1*0) = (1, 0); head 1: logits (2*0, 2*1) = (0, 2)
    e = math.e
    expected = torch.tensor([[[e / (e + 1), 1 / (e + 1)], [1 / (1 + e**2), e**2 / (1 + e**2)]]])
    assert attn.dtype == torch.float32 and attn.shape == (1, 2, 2)
    torch.testing.assert_close(attn, expected)
    # full width, one head: logit = q.k / sqrt(2) -> (1/sqrt2, 2/sqrt2)
    single = primitives.cls_attention_single_head(q[:, 0], k)
    a, b = 1 / math.sqrt(2), 2 / math.sqrt(2)
    torch.testing.assert_close(
        single, torch.tensor([[math.exp(a), math.exp(b)]]) / (math.exp(a) + math.exp(b))
    )


def test_head_and_layer_reductions():
    attn = torch.tensor([[[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]]])  # [B=1, H=2, 3]
    torch.testing.assert_close(primitives.reduce_heads(attn, "mean"), torch.tensor([[0.2, 0.4, 0.4]]))
    torch.testing.assert_close(primitives.reduce_heads(attn, "max"), torch.tensor([[0.3, 0.5, 0.4]]))
    torch.testing.assert_close(primitives.patch_scores(attn), attn[..., 1:])
    layers = [torch.tensor([[1.0, 4.0]]), torch.tensor([[3.0, 2.0]])]
    torch.testing.assert_close(vtc_cls.ensemble_layers(layers, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(vtc_cls.ensemble_layers(layers, "sum"), torch.tensor([[4.0, 6.0]]))
    torch.testing.assert_close(vtc_cls.ensemble_layers(layers, "max"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(vtc_cls.ensemble_layers(layers, "min"), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError):
        vtc_cls.ensemble_layers(layers, "median")


def test_topk_ties_go_to_lower_index_and_result_is_ascending():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    assert primitives.topk_in_rank_order(scores, 3).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert primitives.topk_indices(scores, 2).tolist() == [[1, 2], [0, 1]]
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    assert primitives.topk_in_rank_order(scores, 3).tolist() == [[1, 3, 2]]
    assert primitives.topk_indices(scores, 3).tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError):
        primitives.topk_indices(scores, 5)


def test_iqr_outliers_hand_case():
    # Q1 = 3, Q3 = 7 (linear interpolation over 9 values) -> threshold 7 + 1.5 * 4 = 13: only 100 is an outlier
    assert prumerge.iqr_outlier_count(torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 100])) == 1
    assert prumerge.iqr_outlier_count(torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 9])) == 0


def test_uniform_and_strided_indices():
    assert prumerge.uniform_fill(10, 3).tolist() == [1, 5, 8]
    assert prumerge.uniform_fill(10, 3, exclude=torch.tensor([5])).tolist() == [1, 4, 8]
    assert prumerge.uniform_fill(4, 4).tolist() == [0, 1, 2, 3]
    assert prumerge.uniform_fill(4, 0).tolist() == []
    assert prumerge.strided_indices(10, 3).tolist() == [0, 3, 6, 9]
    assert prumerge.append_unique(torch.tensor([6, 2]), torch.tensor([0, 2, 4, 6])).tolist() == [6, 2, 0, 4]
    with pytest.raises(ValueError):
        prumerge.strided_indices(10, 0)


def test_max_min_diversity_hand_case():
    d = torch.tensor([[0.0, 1, 4, 2], [1, 0, 3, 5], [4, 3, 0, 6], [2, 5, 6, 0]])
    # nearest-other distances per token: 1, 1, 3, 2 -> first pick 2; then farthest from {2}: 3 (6);
    # min distances to {2, 3}: (2, 3, -, -) -> 1; then to {2, 3, 1}: (1, -, -, -) -> 0
    assert divprune.max_min_diversity(d, 4).tolist() == [2, 3, 1, 0]
    # identical tokens (all distances 0) never give a repeated pick
    assert sorted(divprune.max_min_diversity(torch.zeros(3, 3), 3).tolist()) == [0, 1, 2]


def test_max_min_diversity_upstream_first_pick_rule_by_hand():
    # a rounded diagonal entry (0.5 at token 0) is not its column's smallest: upstream's second-smallest entry of
    # each column (diagonal included) is (0.2, 0.1, 0.2) -> token 0; the nearest other token gives (0.1, 0.1, 0.2)
    d = torch.tensor([[0.5, 0.1, 0.2], [0.1, 0.0, 0.3], [0.2, 0.3, 0.0]])
    assert divprune.max_min_diversity(d, 1, first_pick="second-smallest").tolist() == [0]
    assert divprune.max_min_diversity(d, 1).tolist() == [2]
    with pytest.raises(ValueError):
        divprune.max_min_diversity(d, 1, first_pick="largest")


def test_random_indices_distinct_sorted_reproducible():
    a = random_select.random_indices(50, 10, torch.Generator().manual_seed(3))
    b = random_select.random_indices(50, 10, torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist() == sorted(set(a.tolist()))
    assert len(a) == 10


def test_knn_weighted_merge_hand_case():
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[1.0], [10.0], [100.0], [1000.0]])
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    y, nb = prumerge.knn_weighted_merge(x, keys, w, torch.tensor([0]), num_neighbours=2)
    assert nb.tolist() == [[1, 2]]  # cos to 1 ~ 0.995, to 2 = 0, to 3 = -1
    torch.testing.assert_close(y, torch.tensor([[1.0 + 0.2 * 10 + 0.3 * 100]]))
    extra = prumerge.weighted_remainder(x, w, torch.tensor([0]))
    torch.testing.assert_close(extra, torch.tensor([0.2 * 10 + 0.3 * 100 + 0.4 * 1000]))


def test_contextual_merge_hand_case():
    metric = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, -0.2]])
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    merged, targets, assignment = visionzip.contextual_merge(x, metric, 2)
    assert targets.tolist() == [0, 2]  # step = 5 // 2 = 2
    assert assignment.tolist() == [0, 0, 1, 1, 0]
    torch.testing.assert_close(merged, torch.tensor([[1.0 + (2 + 5) / 2], [3.0 + 4.0]]))
    assert visionzip.uniform_targets(10, 3).tolist() == [0, 3, 6]


def test_pool_hand_case():
    x = torch.arange(16, dtype=torch.float32).view(1, 16, 1)  # 4x4 grid, value = raster index
    pooled = pool.pool_to_grid(x, (4, 4), (2, 2))
    torch.testing.assert_close(pooled[0, :, 0], torch.tensor([2.5, 4.5, 10.5, 12.5]))
    assert pool.pool_centres((4, 4), (2, 2)).tolist() == [0, 2, 8, 10]
    assert pool.pool_cells((4, 4), (2, 2)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    # 3 -> 2 adaptive windows overlap: [0, 2) and [1, 3)
    assert pool.pool_windows(3, 2) == [(0, 2), (1, 3)]
    y = torch.arange(9, dtype=torch.float32).view(1, 9, 1)
    torch.testing.assert_close(
        pool.pool_to_grid(y, (3, 3), (2, 2))[0, :, 0], torch.tensor([2.0, 3.0, 5.0, 6.0])
    )


def test_first_true_is_nonzero_with_a_host_size():
    g = torch.Generator().manual_seed(0)
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = torch.rand(97, generator=g) < density
        every = torch.nonzero(mask).flatten()
        for count in {0, every.numel() // 2, every.numel()}:
            assert torch.equal(primitives.first_true(mask, count), every[:count])
