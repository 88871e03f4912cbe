"""Each in-LLM method's selection on small hand-checkable tensors, its schedule, and its argument validation."""

from __future__ import annotations

import argparse

import pytest
import torch

from llava.compression.llm.base import PruneStep
from llava.compression.llm.schedule import average_tokens, per_layer_counts
from llava.compression.llm.scoring import attention_rows, causal_allowed, key_l1_norm, text_raters
from llava.compression.methods.dart import dart_pivot_order, dart_select
from llava.compression.methods.fastv import fastv_keep_count, fastv_keep_for_average
from llava.compression.methods.pdrop import pdrop_average, pdrop_stage_counts, solve_pdrop_ratio
from llava.compression.methods.sparsevlm import (
    dpc_knn_log_density,
    dpc_knn_merge,
    pairwise_distances,
    sparsevlm_recycle,
)
from llava.compression.primitives import top_scoring
from llava.compression.registry import (
    CompressionConfigError,
    ModelGeometry,
    add_method_arguments,
    config_from_args,
    make_config,
)

GEO = ModelGeometry(num_patches=576, grid=(24, 24), vision_layers=24, llm_layers=32)
TINY = ModelGeometry(num_patches=36, grid=(6, 6), vision_layers=1, llm_layers=4)


class StubStep(PruneStep):
    """A PruneStep over given tensors: ``rows[layer]`` is the ``[B, H, T]`` attention of every query asked for."""

    def __init__(self, layer, stage, visual, rows, hidden=None, keys=None, inputs_embeds=None):
        b, t = visual.shape
        self.layer, self.stage, self.geometry = layer, stage, TINY
        self.visual = visual
        self.valid = torch.ones(b, t, dtype=torch.bool)
        self.prompt = self.valid
        self.orig_index = torch.arange(t).expand(b, t)
        self.input_visual, self.input_prompt = visual, self.valid
        self.hidden = torch.zeros(b, t, 4) if hidden is None else hidden
        self.inputs_embeds = self.hidden if inputs_embeds is None else inputs_embeds
        self._rows, self._keys = rows, keys
        self.asked: list[tuple[int, torch.Tensor]] = []

    def attention(self, layer, queries, query_valid=None):
        self.asked.append((layer, queries))
        return self._rows[layer][:, :, None].expand(-1, -1, queries.shape[1], -1)

    def keys(self, layer):
        return self._keys

    def final_norm(self, x):
        return x


# -- pure functions --------------------------------------------------------------------------------------------------


def test_top_scoring_is_ascending_with_ties_to_the_lower_index():
    s = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5])
    assert top_scoring(s, 2).tolist() == [1, 2]
    assert top_scoring(s, 4).tolist() == [1, 2, 3, 4]
    assert top_scoring(s, 9).tolist() == [0, 1, 2, 3, 4]
    assert top_scoring(s, 0).tolist() == []


def test_fastv_keep_count():
    assert fastv_keep_count(576, 0.5, None) == 288
    assert fastv_keep_count(576, 0.75, None) == 144
    assert fastv_keep_count(576, 0.0, None) == 576
    assert fastv_keep_count(576, 0.5, 64) == 64
    assert fastv_keep_count(10, 0.5, 64) == 10


def test_attention_rows_softmax_with_causal_padding_mask_and_gqa():
    q = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [B=1, H=2, Q=1, d=2]
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [5.0, 5.0]]]])  # [1, H_kv=1, T=4, 2]
    valid = torch.tensor([[False, True, True, True]])
    allowed = causal_allowed(torch.tensor([[2]]), valid)  # query at index 2: keys 1, 2 (0 is padding, 3 future)
    assert allowed.tolist() == [[[False, True, True, False]]]
    p = attention_rows(q, k, 1.0, allowed)
    e = torch.exp(torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(p[0, 0, 0], torch.tensor([0.0, e[0] / e.sum(), e[1] / e.sum(), 0.0]))
    e1 = torch.exp(torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(p[0, 1, 0], torch.tensor([0.0, e1[0] / e1.sum(), e1[1] / e1.sum(), 0.0]))


def test_text_raters_are_text_tokens_above_the_mean_relevance():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
    # each visual token puts ~all its softmax mass on one text token -> scores ~[0.5, 0, 0.5], mean 1/3
    assert text_raters(v, t).tolist() == [True, False, True]
    assert text_raters(v, t[:0]).tolist() == []


def test_key_l1_norm_concatenates_heads():
    k = torch.tensor([[[1.0, -2.0], [0.0, 1.0]], [[3.0, 0.0], [-1.0, -1.0]]])  # [H_kv=2, T=2, d=2]
    assert key_l1_norm(k).tolist() == [6.0, 3.0]


def test_dpc_knn_merge_finds_two_clusters_and_averages_them():
    a = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2], [0.1, 0.1]])
    b = torch.tensor([[10.0, 10.0], [10.4, 10.0]])
    merged, centres = dpc_knn_merge(torch.cat([a, b]), 2)
    assert sorted(int(c) >= 4 for c in centres) == [False, True]  # one centre in each group
    means = {tuple(m.round(decimals=4).tolist()) for m in merged}
    assert means == {tuple(a.mean(0).round(decimals=4).tolist()), tuple(b.mean(0).round(decimals=4).tolist())}


def _exact_dpc_centres(x: torch.Tensor, c: int) -> tuple[list[int], torch.Tensor]:
    """Reference DPC-kNN centres in float64 from explicit coordinate differences (density = -mean sq. distance)."""
    x64 = x.double()
    n, d = x64.shape
    dist = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1).sqrt() / d**0.5
    log_density = -(dist.sort(dim=-1).values[:, :c] ** 2).mean(-1)
    parent = []
    for i in range(n):
        denser = [j for j in range(n) if log_density[j] > log_density[i] or (log_density[j] == log_density[i] and j < i)]
        parent.append(min(float(dist[i, j]) for j in denser) if denser else float(dist.max()))
    score = torch.tensor(parent, dtype=torch.float64).log() + log_density
    return sorted(range(n), key=lambda i: (-float(score[i]), i))[:c], log_density


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 30.0])
def test_dpc_knn_densities_neither_round_nor_underflow(scale):

    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 64, generator=g) * scale
    # old densities exp(-mean d^2): all 1.0 in fp32 for tiny activations, all 0.0 for large ones
    log_density = dpc_knn_log_density(pairwise_distances(x), 3)
    assert torch.unique(log_density).numel() == 24
    centres, exact = _exact_dpc_centres(x, 3)
    assert torch.equal(torch.sort(log_density, stable=True).indices, torch.sort(exact, stable=True).indices)
    _, got = dpc_knn_merge(x, 3)
    assert got.tolist() == centres


def test_dpc_knn_centres_exact_under_a_large_common_component():
    g = torch.Generator().manual_seed(4)
    for trial in range(20):
        direction = torch.randn(256, generator=g)
        # token differences of norm ~1.4 on a shared component of norm 1000 (the matrix-multiply path of cdist
        # reordered the centres in 20 of these 20 trials)
        x = torch.randn(40, 256, generator=g) * 0.1 + 1000.0 * direction / direction.norm()
        centres, _ = _exact_dpc_centres(x, 5)
        _, got = dpc_knn_merge(x, 5)
        assert got.tolist() == centres, f"trial {trial}"


def test_sparsevlm_recycle_counts():
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(17, 8, generator=g), torch.rand(17, generator=g)
    merged, centres = sparsevlm_recycle(x, s)
    assert merged.shape == (1, 8)  # top int(0.3 * 17) + 1 = 6 -> 6 // 10 + 1 = 1 cluster
    top6 = set(torch.sort(s, descending=True).indices[:6].tolist())
    assert int(centres[0]) in top6
    torch.testing.assert_close(merged[0], x[sorted(top6)].mean(0))
    merged, _ = sparsevlm_recycle(torch.randn(40, 8, generator=g), torch.rand(40, generator=g))
    assert merged.shape[0] == 2  # 13 recycled -> 2 clusters
    assert sparsevlm_recycle(x[:0], s[:0]) is None


def test_dart_select_keeps_pivots_and_the_least_similar_tokens():
    # 6 visual tokens in 2-D; token 0 has the largest key norm (image pivot); one text pivot along +y
    hidden = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.7, 0.7]])
    norms = torch.tensor([9.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    text_hidden = torch.tensor([[0.0, 1.0], [5.0, 5.0]])
    text_norms = torch.tensor([3.0, 1.0])
    pos, text_pos = torch.arange(6), torch.tensor([6, 7])
    args = (hidden, norms, pos, text_hidden, text_norms, text_pos)
    keep = dart_select(*args, pivot_image=1, pivot_text=1, budget=2)
    # pivot 0 (image, [1,0]) claims token 2 ([-1,0], cos -1); text pivot [0,1] then claims token 4 ([0,-1])
    assert keep.tolist() == [0, 2, 4]
    keep = dart_select(*args, pivot_image=1, pivot_text=1, budget=4)
    # image pivot: 2 (cos -1) then 4 (cos 0) / 3 (cos 0): tie -> lower index 3; text pivot: 4 (cos -1), then 1
    assert keep.tolist() == [0, 1, 2, 3, 4]


# Three pivots where CPython's set order is not ascending and the greedy claims differ. Visual tokens sit at
# sequence positions 9..14, text at 15, 16. Image pivots: A (position 9, largest key norm), B (10); text pivot: 16.
# x1 is the least similar token for both A and the text pivot; whoever claims first gets it.
DART_HAND = dict(
    hidden=torch.tensor(
        [
            [0.0, 1.0, 0.0],  # A (pivot)
            [0.0, 0.0, 1.0],  # B (pivot)
            [-1.0, -1.0, 0.0],  # x1: cos -0.71 with A and with the text pivot
            [0.0, -0.5, 1.0],  # x2: cos -0.45 with A, 0 with the text pivot
            [-0.5, 0.0, 1.0],  # x3: cos -0.45 with the text pivot, 0 with A
            [0.0, 0.0, -1.0],  # x4: cos -1 with B
        ]
    ),
    key_norm=torch.tensor([9.0, 8.0, 1.0, 1.0, 1.0, 1.0]),
    positions=torch.arange(9, 15),
    text_hidden=torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.0, 0.0]]),
    text_key_norm=torch.tensor([1.0, 5.0]),
    text_positions=torch.tensor([15, 16]),
)


def test_dart_pivot_order_is_cpython_set_order_of_the_sequence_positions():

    assert dart_pivot_order([9, 10], [16], "set") == [16, 9, 10]  # slots 16 % 8 = 0, 1, 2
    assert dart_pivot_order([9, 10], [16], "ascending") == [9, 10, 16]
    # 8 pivots: the table grows past 5 entries (to 32 slots) and collisions keep insertion order
    image, text = [40, 35, 71, 36], [615, 620, 612, 640]
    assert dart_pivot_order(image, text, "set") == list(set(image + text))
    assert dart_pivot_order(image, text, "set") == [640, 35, 36, 612, 615, 40, 71, 620]


def test_dart_claims_in_upstream_set_order_by_default():
    keep = dart_select(**DART_HAND, pivot_image=2, pivot_text=1, budget=3)
    # set order [text, A, B]: the text pivot claims x1, A then x2, B x4
    assert keep.tolist() == [0, 1, 2, 3, 5]
    keep = dart_select(**DART_HAND, pivot_image=2, pivot_text=1, budget=3, order="ascending")
    # ascending [A, B, text]: A claims x1, B x4, the text pivot x3
    assert keep.tolist() == [0, 1, 2, 4, 5]


def test_dart_recomputes_k_when_fewer_text_tokens_than_q_follow_the_image():
    g = torch.Generator().manual_seed(0)
    n = 40
    hidden, norms = torch.randn(n, 8, generator=g), torch.rand(n, generator=g)
    text_hidden, text_norms = torch.randn(2, 8, generator=g), torch.rand(2, generator=g)
    args = (hidden, norms, torch.arange(n), text_hidden, text_norms, torch.tensor([n, n + 1]))
    # p = q = 4 but q' = 2: budget 24 -> k = 24 // 6 = 4, 4 + 6 * 4 = 28 kept (k = 24 // 8 = 3 kept only 22)
    assert dart_select(*args, pivot_image=4, pivot_text=4, budget=24).numel() == 4 + 6 * 4
    # budget 36 -> k = 6: 4 + 6 * 6 = 40 = every token (k = 36 // 8 = 4 kept only 28)
    assert dart_select(*args, pivot_image=4, pivot_text=4, budget=36).numel() == n


# -- schedules -------------------------------------------------------------------------------------------------------


def test_per_layer_counts_and_average():
    counts = per_layer_counts(8, 576, [(2, 100), (5, 10)])
    assert counts == [576, 576, 100, 100, 100, 10, 10, 10]
    assert average_tokens(counts) == sum(counts) / 8


def test_fastv_budget_conversion_matches_the_spec():
    assert [fastv_keep_for_average(t, 2, 32, 576) for t in (192, 128, 64)] == [166, 98, 30]


def test_pdrop_schedule_and_solver_match_the_spec():
    assert pdrop_stage_counts(576, 0.5, 3) == [288, 144, 72]
    assert pdrop_average(576, 0.5, [8, 16, 24], 32) == 270
    solved = [solve_pdrop_ratio(t, 576, [2, 8, 16], 32) for t in (192, 128, 64)]
    assert [round(r, 2) for r in solved] == [0.56, 0.42, 0.19]
    for target, r in zip((192, 128, 64), solved):
        assert abs(pdrop_average(576, r, [2, 8, 16], 32) - target) < 0.5
    assert round(solve_pdrop_ratio(192, 576, [8, 16, 24], 32), 3) == 0.254
    with pytest.raises(CompressionConfigError, match="between 144"):
        solve_pdrop_ratio(128, 576, [8, 16, 24], 32)


# -- each method's select() on a stub step ---------------------------------------------------------------------------


def _visual(b, t, spans):
    v = torch.zeros(b, t, dtype=torch.bool)
    for r, (s, e) in enumerate(spans):
        v[r, s:e] = True
    return v


def test_fastv_select_uses_layer_k_minus_1_last_token_head_mean():
    cfg = make_config("fastv", TINY, fastv_k=2, visual_token_num=2)
    visual = _visual(2, 8, [(2, 6), (1, 5)])
    rows = torch.zeros(2, 2, 8)
    rows[0, 0, 2:6] = torch.tensor([0.1, 0.4, 0.0, 0.3])  # head mean over [0, 0] for head 1 -> halves
    rows[1, 1, 1:5] = torch.tensor([0.5, 0.1, 0.2, 0.2])
    step = StubStep(2, 0, visual, {1: rows})
    sel = cfg.select(step)
    assert [s.keep.tolist() for s in sel] == [[1, 3], [0, 2]]  # ties (0.2, 0.2) -> lower index
    layer, queries = step.asked[0]
    assert layer == 1 and queries.tolist() == [[7], [7]]  # layer K-1, the last prompt token


def test_pdrop_select_uses_the_next_layers_attention_and_lambda_powers():
    cfg = make_config("pdrop", TINY, pdrop_layers="1,3", pdrop_lambda=0.5)
    visual = _visual(1, 12, [(2, 10)])
    rows = {3: torch.arange(12, dtype=torch.float32).flip(0)[None, None].repeat(1, 2, 1)}
    step = StubStep(3, 1, visual, rows)  # second stage: int(8 * 0.25) = 2 of the current visual tokens
    assert step.input_visual_count(0) == 8
    (sel,) = cfg.select(step)
    assert sel.keep.tolist() == [0, 1]  # the earliest visual tokens score highest here
    assert step.asked[0][0] == 3  # the layer about to run (its own q/k), not K-1


def test_sparsevlm_select_uses_raters_and_recycles():
    cfg = make_config("sparsevlm", TINY, sparsevlm_layers="1", sparsevlm_counts="3")
    t = 14
    visual = _visual(1, t, [(1, 11)])  # 10 visual tokens, text after them at 11..13
    emb = torch.zeros(1, t, 2)
    emb[0, 1:11] = torch.tensor([1.0, 0.0])
    emb[0, 11] = torch.tensor([10.0, 0.0])  # the rater (the only text token visual tokens attend to)
    scores = torch.zeros(1, 2, t)
    scores[0, :, 1:11] = torch.tensor([0.0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.0, 0.0, 0.0])
    hidden = torch.randn(1, t, 2, generator=torch.Generator().manual_seed(0))
    step = StubStep(2, 0, visual, {1: scores}, hidden=hidden, inputs_embeds=emb)
    (sel,) = cfg.select(step)
    layer, queries = step.asked[0]
    assert layer == 1 and queries.tolist() == [[11]]  # layer l = K-1, the rater row only
    assert sel.keep.tolist() == [1, 3, 5]
    # 7 pruned -> top int(2.1) + 1 = 3 recycled (tokens 6, 4, 2 by score) -> 1 cluster, their mean
    assert sel.merged.shape == (1, 2)
    torch.testing.assert_close(sel.merged[0], hidden[0, [1 + 2, 1 + 4, 1 + 6]].mean(0))
    assert int(sel.merged_position_of[0]) in (2, 4, 6)


def test_dart_select_on_stub_uses_layer_k_minus_1_keys_and_text_after_the_image():
    cfg = make_config("dart", TINY, dart_k=1, visual_token_num=2, dart_pivot_image=1, dart_pivot_text=1)
    t = 9
    visual = _visual(1, t, [(1, 7)])
    hidden = torch.zeros(1, t, 2)
    hidden[0, 1:7] = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.7, 0.7]])
    hidden[0, 7] = torch.tensor([0.0, 1.0])
    hidden[0, 0] = torch.tensor([0.0, -1.0])  # text *before* the image is never a pivot
    keys = torch.ones(1, 1, t, 2)
    keys[0, 0, 1] = 9.0  # image pivot: visual token 0
    keys[0, 0, 7] = 3.0  # text pivot: position 7
    keys[0, 0, 0] = 99.0
    step = StubStep(1, 0, visual, {}, hidden=hidden, keys=keys)
    (sel,) = cfg.select(step)
    assert sel.keep.tolist() == [0, 2, 4]
    assert cfg.kept_count() == 3


@pytest.mark.parametrize("order", ["set", "ascending"])
def test_dart_select_on_stub_identifies_pivots_by_unpadded_sequence_position(order):
    """DART_HAND's row after 7 padding tokens: padded positions (16, 17, 23) would give the ascending order."""
    cfg = make_config(
        "dart", TINY, dart_k=1, visual_token_num=3, dart_pivot_image=2, dart_pivot_text=1, dart_pivot_order=order
    )
    pad, t = 7, 7 + 17
    visual = _visual(1, t, [(pad + 9, pad + 15)])
    hidden = torch.zeros(1, t, 3)
    hidden[0, pad + 9 : pad + 15] = DART_HAND["hidden"]
    hidden[0, pad + 15 : pad + 17] = DART_HAND["text_hidden"]
    hidden[0, :pad] = torch.tensor([1.0, 0.0, 0.0])
    keys = torch.ones(1, 1, t, 3)
    keys[0, 0, pad + 9 : pad + 15, 0] = DART_HAND["key_norm"] - 2
    keys[0, 0, pad + 15 : pad + 17, 0] = DART_HAND["text_key_norm"] - 2
    keys[0, 0, :pad] = 99.0  # padding is never a pivot
    step = StubStep(1, 0, visual, {}, hidden=hidden, keys=keys)
    step.valid = torch.arange(t)[None] >= pad
    step.prompt = step.input_prompt = step.valid
    (sel,) = cfg.select(step)
    expected = dart_select(**DART_HAND, pivot_image=2, pivot_text=1, budget=3, order=order)
    assert sel.keep.tolist() == expected.tolist() == ([0, 1, 2, 3, 5] if order == "set" else [0, 1, 2, 4, 5])


# -- configuration: flags, defaults, errors before any model work ---------------------------------------------------


def test_flags_are_registered_and_parsed():
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    args = parser.parse_args(["--method", "fastv", "--fastv-k", "3", "--fastv-r", "0.75"])
    cfg = config_from_args(args, GEO)
    assert (cfg.fastv_k, cfg.ratio, cfg.llm_positions) == (3, 0.75, "original")
    args = parser.parse_args(["--method", "pdrop", "--pdrop-layers", "2,8,16", "--visual-token-num", "128"])
    cfg = config_from_args(args, GEO)
    assert cfg.prune_layers(GEO) == (2, 8, 16) and cfg.llm_positions == "compact"
    assert round(cfg.ratio(GEO), 2) == 0.42
    args = parser.parse_args(["--method", "sparsevlm", "--visual-token-num", "64", "--no-sparsevlm-recycle"])
    cfg = config_from_args(args, GEO)
    assert cfg.counts == (66, 30, 17) and cfg.prune_layers(GEO) == (3, 7, 16) and not cfg.sparsevlm_recycle
    args = parser.parse_args(["--method", "dart", "--visual-token-num", "192"])
    cfg = config_from_args(args, GEO)
    assert cfg.kept_count() == 196 and cfg.prune_layers(GEO) == (2,)
    args = parser.parse_args(["--method", "fastv", "--pdrop-lambda", "0.3"])
    with pytest.raises(CompressionConfigError, match="--pdrop-lambda"):
        config_from_args(args, GEO)


def test_defaults_are_the_papers():
    assert make_config("fastv", GEO).to_dict() == {
        "fastv_k": 2, "fastv_r": None, "visual_token_num": None, "llm_positions": "original"
    }
    assert make_config("fastv", GEO).ratio == 0.5
    pdrop = make_config("pdrop", GEO)
    assert pdrop.prune_layers(GEO) == (8, 16, 24) and pdrop.ratio(GEO) == 0.5
    sparse = make_config("sparsevlm", GEO)
    assert sparse.counts == (300, 200, 110) and sparse.layers == (2, 6, 15)
    dart = make_config("dart", GEO)
    assert (dart.dart_k, dart.budget, dart.kept_count()) == (2, 128, 132)


@pytest.mark.parametrize(
    "method,kwargs,match",
    [
        ("fastv", dict(fastv_k=0), "--fastv-k"),
        ("fastv", dict(fastv_k=4), "--fastv-k"),  # 4 layers: K <= 3
        ("fastv", dict(fastv_r=1.0), "--fastv-r"),
        ("fastv", dict(fastv_r=0.5, visual_token_num=3), "not both"),
        ("fastv", dict(visual_token_num=37), "--visual-token-num"),
        ("pdrop", dict(), "--pdrop-layers"),  # 8,16,24 do not exist in a 4-layer LLM
        ("pdrop", dict(pdrop_layers="2,1"), "strictly increasing"),
        ("pdrop", dict(pdrop_layers="0,2"), "--pdrop-layers"),
        ("pdrop", dict(pdrop_layers="1,2", pdrop_lambda=0.0), "--pdrop-lambda"),
        ("pdrop", dict(pdrop_layers="a,b"), "comma-separated"),
        ("pdrop", dict(pdrop_layers="2,3", visual_token_num=5), "averages between"),
        ("sparsevlm", dict(), "--sparsevlm-layers"),
        ("sparsevlm", dict(sparsevlm_layers="0,1", sparsevlm_counts="5"), "counts"),
        ("sparsevlm", dict(sparsevlm_layers="3", sparsevlm_counts="5"), "--sparsevlm-layers"),
        ("sparsevlm", dict(visual_token_num=100), "preset"),
        ("dart", dict(dart_k=0), "--dart-k"),
        ("dart", dict(visual_token_num=64), "more than the 36"),
        ("dart", dict(dart_pivot_image=0, dart_pivot_text=0), "pivot"),
        ("fastv", dict(llm_positions="shifted"), "--llm-positions"),
    ],
)
def test_invalid_arguments_raise_config_errors(method, kwargs, match):
    with pytest.raises(CompressionConfigError, match=match):
        make_config(method, TINY, **kwargs)


def test_invalid_arguments_leave_the_model_untouched(model):
    import llava.compression as vtc

    with pytest.raises(CompressionConfigError):
        vtc.apply(model, "fastv", fastv_k=9)
    assert "forward" not in model.model.language_model.__dict__
    assert "generate" not in model.__dict__
