"""FiCoCo's filter / correlate / compress stages and the budget solver on small hand-checkable tensors."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPAttention, eager_attention_forward

from llava.compression import primitives
from llava.compression.methods import ficoco, tome

T = torch.tensor


def _t(x):
    if isinstance(x, list | tuple) and x and isinstance(x[0], torch.Tensor):
        return torch.stack([_t(v) for v in x])
    if isinstance(x, list | tuple) and x and isinstance(x[0], list | tuple):
        return torch.stack([_t(v) for v in x])
    return torch.as_tensor(x, dtype=torch.float32)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(_t(a).float(), _t(b).float(), atol=tol, rtol=0)


# -- attention from q/k --------------------------------------------------------------------------------------------


def test_head_mean_attention_equals_eager_clip_attention_weights():
    torch.manual_seed(0)
    attn = CLIPAttention(CLIPVisionConfig(hidden_size=32, num_attention_heads=4)).eval()
    x = torch.randn(2, 9, 32)
    q = ficoco.split_heads(attn.q_proj(x), 4)
    k = ficoco.split_heads(attn.k_proj(x), 4)
    v = ficoco.split_heads(attn.v_proj(x), 4)
    bias = torch.randn(2, 1, 1, 9)
    with torch.no_grad():
        _, ref = eager_attention_forward(attn, q, k, v, bias, scaling=attn.scale)
        mine = ficoco.head_mean_attention(q, k, attn.scale, mask=bias)
        logits = ficoco.head_mean_attention(q, k, attn.scale, logits=True)
    close(mine, ref.mean(dim=1), 1e-6)
    close(mine.sum(-1), torch.ones(2, 9))
    close(logits, ((q @ k.transpose(-1, -2)) * attn.scale).mean(dim=1).detach(), 1e-5)


# -- Filter ---------------------------------------------------------------------------------------------------------

# [CLS] + 3 patches; rows are queries
ATTN_V = T([[[0.1, 0.5, 0.3, 0.1], [0.2, 0.4, 0.2, 0.2], [0.1, 0.1, 0.6, 0.2], [0.3, 0.5, 0.1, 0.1]]])


def test_vision_redundancy_paper_formula_by_hand():
    received = T([0.4 + 0.1 + 0.5, 0.2 + 0.6 + 0.1, 0.2 + 0.2 + 0.1]) / 3  # column means over patch queries
    sent = T([0.4 + 0.2 + 0.2, 0.1 + 0.6 + 0.2, 0.5 + 0.1 + 0.1]) / 3  # row means over patch keys
    cls = T([0.5, 0.3, 0.1])
    close(ficoco.vision_redundancy(ATTN_V, 0.35), [0.35 * received - 0.65 * cls])
    close(ficoco.vision_redundancy(ATTN_V, 0.35, "sent"), [0.35 * sent - 0.65 * cls])
    # quirks: L2-normalised terms, lambda on the [CLS] term
    q = ficoco.vision_redundancy(ATTN_V, 0.35, "sent", quirks=True)
    close(q, [0.65 * sent / sent.norm() - 0.35 * cls / cls.norm()])
    with pytest.raises(ValueError):
        ficoco.vision_redundancy(ATTN_V, 0.35, "both")


def test_local_penalty_by_hand_on_a_partly_merged_grid():
    # 4x4 grid, 2x2 windows {0,1,4,5} {2,3,6,7} {8,9,12,13} {10,11,14,15}; positions 3,4,6,9,11,14,15 already gone
    positions = T([[0, 1, 2, 5, 7, 8, 10, 12, 13]])
    scores = T([[0.3, 0.5, -0.2, 0.1, -0.4, 0.2, 0.0, 0.2, -0.1]])
    out = ficoco.local_penalty(scores, positions, (4, 4))
    # window maxima: 0.5 @1 (x2), -0.2 @2 (/2), tie 0.2 @8 and @12 -> lower position 8 (x2), 0.0 @10 unchanged
    close(out, [[0.3, 1.0, -0.1, 0.1, -0.4, 0.4, 0.0, 0.2, -0.1]])
    # per image: a second image with other positions gets its own windows
    both = ficoco.local_penalty(
        torch.cat([scores, scores]), torch.cat([positions, T([[0, 4, 5, 6, 8, 9, 10, 11, 15]])]), (4, 4)
    )
    close(both[1], [0.3, 1.0, -0.2, 0.2, -0.4, 0.4, 0.0, 0.4, -0.1])
    # odd grid: 3x3 -> windows {0,1,3,4} {2,5} {6,7} {8}
    out = ficoco.local_penalty(
        T([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -7.0, -8.0, 9.0]]), torch.arange(9)[None], (3, 3)
    )
    close(out, [[1.0, 2.0, 3.0, 4.0, 10.0, 12.0, -3.5, -8.0, 18.0]])


def test_select_sources_takes_the_most_redundant_ties_to_lower_index():
    src, keep = ficoco.select_sources(T([[0.1, 0.9, 0.5, 0.9, 0.0]]), 2)
    assert src.tolist() == [[1, 3]] and keep.tolist() == [[0, 2, 4]]
    src, keep = ficoco.select_sources(T([[0.5, 0.5, 0.5]]), 1)
    assert src.tolist() == [[0]] and keep.tolist() == [[1, 2]]


# sequence: 0 system, 1-2 visual, 3-4 text; causal softmax rows
ATTN_L = T(
    [
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0, 0.0],
            [0.2, 0.3, 0.5, 0.0, 0.0],
            [0.1, 0.2, 0.3, 0.4, 0.0],
            [0.1, 0.4, 0.1, 0.2, 0.2],
        ]
    ]
)
VIS, TXT, TMASK = T([[1, 2]]), T([[3, 4]]), T([[True, True]])


def test_language_redundancy_causal_reading_by_hand():
    received = T([0.5 + 0.3, 0.0 + 0.5]) / 2  # visual queries -> each visual key
    text = T([0.2 + 0.4, 0.3 + 0.1]) / 2  # text queries -> each visual key
    close(ficoco.language_redundancy(ATTN_L, VIS, TXT, TMASK, 0.6), [0.6 * received - 0.4 * text])
    sent = T([0.5 + 0.0, 0.3 + 0.5]) / 2
    close(ficoco.language_redundancy(ATTN_L, VIS, TXT, TMASK, 0.6, "sent"), [0.6 * sent - 0.4 * text])
    # a padded text slot is ignored
    padded = ficoco.language_redundancy(ATTN_L, VIS, T([[3, 0]]), T([[True, False]]), 0.6)
    close(padded, [0.6 * received - 0.4 * T([0.2, 0.3])])


def test_language_quirks_follow_the_released_formula():
    logits = torch.arange(25, dtype=torch.float32).reshape(1, 5, 5) / 10
    s = ficoco.language_redundancy(logits, VIS, TXT, TMASK, 0.6, quirks=True)
    ell = logits[0]
    expected = [0.6 * (ell[i, 1] + ell[i, 2]) - 0.4 * (ell[i, 3] + ell[i, 4]) / 2 for i in (1, 2)]
    close(s, [expected])
    c = ficoco.language_correlation(logits, VIS, T([[0]]), T([[1]]), TXT, TMASK, 0.6, quirks=True)
    # Con = 0.6 l_vv + 0.4 l_vt @ l_tv, self excluded, softmax over the visual tokens -> only one other token
    close(c, [[[1.0]]])


def test_language_correlation_direct_plus_text_bridge_by_hand():
    c = ficoco.language_correlation(ATTN_L, VIS, T([[0]]), T([[1]]), TXT, TMASK, 0.6)
    direct = 0.0 + 0.3  # A[1,2] is masked, A[2,1] = 0.3
    indirect = (0.2 * 0.3 + 0.4 * 0.1) / 2
    close(c, [[[0.6 * direct + 0.4 * indirect]]])


# -- Correlate ------------------------------------------------------------------------------------------------------


def test_vision_correlation_reads_source_rows_preserved_columns():
    c = ficoco.vision_correlation(ATTN_V, T([[0, 2]]), T([[1]]))
    close(c, [[[0.2], [0.1]]])  # patch 0 -> patch 1, patch 2 -> patch 1
    q = ficoco.vision_correlation(ATTN_V, T([[0]]), T([[1, 2]]), quirks=True)  # row softmax of the logits
    close(q, ATTN_V.softmax(-1)[:, 1:2, 2:4])


def test_quantile_matches_torch_quantile():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 517, generator=g)
    for q in (0.0, 0.25, 0.5, 0.998, 1.0):
        close(ficoco.quantile(x, q), torch.quantile(x, q, dim=-1, keepdim=True), 1e-5)
    assert ficoco.quantile(x.half(), 0.998).dtype == torch.float32  # fp16 input is fine (upstream bug 4)


def test_adaptive_targets_by_hand():
    corr = T([[[0.1, 0.4, 0.4, 0.1], [0.2, 0.6, 0.1, 0.1]]])
    alpha, counts = ficoco.adaptive_targets(corr, 0.5)
    # row 0: tau = 0.25 -> {1, 2}; row 1: sorted [.1 .1 .2 .6], tau = 0.15 -> {0, 1}
    close(alpha, [[[0.0, 0.5, 0.5, 0.0], [0.25, 0.75, 0.0, 0.0]]])
    assert counts.tolist() == [[2, 2]]
    alpha, counts = ficoco.adaptive_targets(corr, 0.998)
    close(alpha, [[[0.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]]])  # a tie keeps both maxima
    assert counts.tolist() == [[2, 1]]
    alpha, counts = ficoco.adaptive_targets(torch.zeros(1, 1, 3), 0.998)  # all-zero row: uniform over ties
    close(alpha, [[[1 / 3, 1 / 3, 1 / 3]]])


# -- Compress -------------------------------------------------------------------------------------------------------

X = T([[[1.0], [2.0], [4.0], [8.0]]])
SRC, KEEP = T([[0, 3]]), T([[1, 2]])
ALPHA = T([[[1.0, 0.0], [0.25, 0.75]]])  # token 0 -> token 1; token 3 -> 1/4 to token 1, 3/4 to token 2


def test_compress_self_preserving_eq2_by_hand():
    y, sizes = ficoco.compress(X, SRC, KEEP, ALPHA, torch.ones(1, 4))
    close(y, [[[(2 + 1 + 0.25 * 8) / 2.25], [(4 + 0.75 * 8) / 1.75]]])
    close(sizes, [[2.25, 1.75]])  # total size 4 conserved
    y, _ = ficoco.compress(X, SRC, KEEP, ALPHA, normalize=False)  # released FiCoCo-L update
    close(y, [[[5.0], [10.0]]])


def test_size_weighted_compress_conserves_mass():
    sizes = T([[2.0, 1.0, 1.0, 3.0]])
    y, new = ficoco.compress(X, SRC, KEEP, ALPHA, sizes, size_weighted=True)
    close(y, [[[(2 + 2 + 0.75 * 8) / 3.75], [(4 + 2.25 * 8) / 3.25]]])
    close((y[..., 0] * new).sum(), (X[..., 0] * sizes).sum())  # sum_i s_i x_i before == after
    close(new.sum(), sizes.sum())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, 5, generator=g)
    s = torch.rand(2, 30, generator=g) * 4 + 1
    src, keep = ficoco.select_sources(torch.rand(2, 30, generator=g), 11)
    alpha, _ = ficoco.adaptive_targets(torch.rand(2, 11, 19, generator=g), 0.8)
    y, new = ficoco.compress(x, src, keep, alpha, s, size_weighted=True)
    close((y * new[..., None]).sum(1), (x * s[..., None]).sum(1), 1e-4)


# -- budget ---------------------------------------------------------------------------------------------------------


def test_merge_schedule_reaches_every_target_exactly():
    for n, layers in itertools.product((10, 64, 576), (1, 3, 11, 23)):
        for target in sorted({1, 2, n // 3, n // 2, n - 1, n}):
            s = primitives.merge_schedule(n, layers, target=target)
            assert n - sum(s) == target and len(s) == layers and max(s) - min(s) <= 1
            assert s == sorted(s, reverse=True)  # earlier layers take the remainder
    cap = lambda n: tome.max_merges(n + 1, protected=1)  # noqa: E731 - ToMe halves at most
    for target in (1, 7, 64, 128, 192, 575):
        s = primitives.merge_schedule(576, 23, target=target, cap=cap)
        assert 576 - sum(s) == target
        n = 576
        for step in s:
            assert step <= cap(n)
            n -= step
    assert primitives.merge_schedule(576, 11, r=42) == [42] * 11  # the released r: 576 - 11 * 42 = 114
    assert primitives.merge_schedule(576, 11, target=64, r=50) == [50] * 10 + [12]
    assert primitives.merge_schedule(576, 11, target=64) == [47] * 6 + [46] * 5
    with pytest.raises(ValueError):
        primitives.merge_schedule(576, 11, target=64, r=40)  # 440 < 512 merges
    with pytest.raises(ValueError):
        primitives.merge_schedule(576, 3, target=1, cap=cap)
