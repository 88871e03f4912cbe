"""ToMe's pure functions and the in-encoder layer step: matching by hand, mass conservation, proportional attention."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from llava.compression.families.clip_merging import _merging_layer_forward
from llava.compression.methods import tome
from llava.compression.vision_encoder import EncoderTokens, VisionEncoderMethod

T = torch.tensor

# [CLS], then 5 tokens; A = positions {0, 2, 4}, B = {1, 3, 5}
METRIC = T(
    [
        [
            [1.0, 0.0, 0.0],  # 0 [CLS] (protected)
            [0.0, 1.0, 0.0],  # 1
            [0.0, 1.0, 0.0],  # 2 == 1 -> cos 1
            [0.0, 0.0, 1.0],  # 3
            [1.0, 0.0, 1.0],  # 4 ~ 5 -> cos 0.994
            [1.0, 0.0, 0.8],
        ]
    ]
)  # 5


def test_bipartite_soft_matching_by_hand():
    plan = tome.bipartite_soft_matching(METRIC, 1, order="raster")
    assert (
        plan.src.tolist() == [[2]] and plan.dst.tolist() == [[1]] and plan.keep.tolist() == [[0, 1, 3, 4, 5]]
    )
    assert tome.bipartite_soft_matching(METRIC, 1).keep.tolist() == [[0, 4, 1, 3, 5]]  # official: A left, then B
    plan = tome.bipartite_soft_matching(METRIC, 2, order="raster")
    assert (
        plan.src.tolist() == [[2, 4]]
        and plan.dst.tolist() == [[1, 5]]
        and plan.keep.tolist() == [[0, 1, 3, 5]]
    )
    assert tome.bipartite_soft_matching(METRIC, 2).keep.tolist() == [[0, 1, 3, 5]]
    capped = tome.bipartite_soft_matching(METRIC, 9)  # at most (6 - 1) // 2 = 2 merges; [CLS] never a source
    assert capped.r == 2 and 0 not in capped.src.tolist()[0]
    none = tome.bipartite_soft_matching(METRIC, 0)
    assert none.r == 0 and none.keep.tolist() == [list(range(6))]


def test_key_metric_is_the_head_mean_of_keys():
    k = torch.arange(24, dtype=torch.float32).reshape(1, 2, 12)
    assert torch.equal(tome.key_metric(k, 3), k.reshape(1, 2, 3, 4).mean(2))


def test_weighted_average_merge_conserves_mass_and_size():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 8, generator=g)
    sizes = torch.rand(3, 17, generator=g) * 3 + 1
    plan = tome.bipartite_soft_matching(torch.randn(3, 17, 4, generator=g), 6)
    y, new = tome.merge_weighted_average(x, sizes, plan)
    assert y.shape == (3, 11, 8) and new.shape == (3, 11)
    torch.testing.assert_close((y * new[..., None]).sum(1), (x * sizes[..., None]).sum(1))
    torch.testing.assert_close(new.sum(1), sizes.sum(1))
    # survivors untouched by any source keep their value
    untouched = [j for j in plan.keep[0].tolist() if j not in plan.dst[0].tolist()]
    for j in untouched:
        torch.testing.assert_close(y[0, plan.keep[0].tolist().index(j)], x[0, j])
    # by hand: 1 and 2 merge with sizes 1 and 3
    y, new = tome.merge_weighted_average(
        T([[[0.0], [2.0], [6.0], [1.0], [1.0], [1.0]]]),
        T([[1.0, 1.0, 3.0, 1.0, 1.0, 1.0]]),
        tome.bipartite_soft_matching(METRIC, 1, order="raster"),
    )
    assert y[0, :, 0].tolist() == [0.0, (2 + 18) / 4, 1.0, 1.0, 1.0] and new[0].tolist() == [1, 4, 1, 1, 1]


class _PropOnly(VisionEncoderMethod):
    """Proportional attention, no merge: isolates the attention bias of the layer step."""

    @property
    def proportional_attention(self) -> bool:
        return True


def test_proportional_attention_sdpa_layer_equals_eager_reference():
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4)
    cfg._attn_implementation = "sdpa"
    layer = CLIPEncoderLayer(cfg).eval()
    eager = copy.deepcopy(layer)
    eager.self_attn.config = copy.deepcopy(cfg)
    eager.self_attn.config._attn_implementation = "eager"
    x = torch.randn(2, 10, 32)
    tokens = EncoderTokens.start(2, (3, 3))
    tokens.sizes = torch.rand(2, 10) * 5 + 1
    tokens.merged_once = True
    step = _merging_layer_forward(0, 0, _PropOnly(), tokens)
    with torch.no_grad():
        sdpa_out = step(layer, x)
        eager_out = step(eager, x)
        # explicit reference: softmax(q k^T / sqrt(d) + log s) v
        a = layer.self_attn
        h = layer.layer_norm1(x)
        q, k, v = (p(h).reshape(2, 10, 4, 8).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        w = ((q @ k.transpose(-1, -2)) * a.scale + tokens.sizes.log()[:, None, None, :]).softmax(-1)
        attn_out = a.out_proj((w @ v).transpose(1, 2).reshape(2, 10, 32))
        mid = x + attn_out
        ref = mid + layer.mlp(layer.layer_norm2(mid))
        plain = layer(x, None)  # without the bias the result differs
    torch.testing.assert_close(sdpa_out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager_out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, ref, atol=1e-3)
    # sizes all 1 -> bias log 1 = 0 -> the stock layer
    tokens.sizes = torch.ones(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(step(layer, x), plain, atol=1e-6, rtol=0)


# -- token order: the official [unmerged A] + [B] vs raster ----------------------------------------------------------

_S = 0.19**0.5
# [CLS] + 6 patches (tokens 1..6 = patches 0..5 of a 2x3 grid). Similar pairs: 4 ~ 1 (cos 1), 6 ~ 5 (cos 0.9),
# 2 ~ 3 (cos 0.8); every other pair that can meet is at most cos 0.26.
ORDER_METRIC = T(
    [
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],  # 0 [CLS]
            [0.0, 1.0, 0.0, 0.0, 0.0],  # 1
            [0.0, 0.0, 0.8, 0.6, 0.0],  # 2
            [0.0, 0.0, 1.0, 0.0, 0.0],  # 3
            [0.0, 1.0, 0.0, 0.0, 0.0],  # 4 == 1
            [0.0, 0.0, 0.0, 0.0, 1.0],  # 5
            [0.0, 0.0, 0.0, _S, 0.9],  # 6
        ]
    ]
)


def test_official_order_by_hand_after_one_and_two_merges():
    # step 1: A = {0, 2, 4, 6}, B = {1, 3, 5}; best edges 4->1 (1.0), 6->5 (0.9), 2->3 (0.8); [CLS] protected
    one = tome.bipartite_soft_matching(ORDER_METRIC, 1, order="official")
    assert one.src.tolist() == [[4]] and one.dst.tolist() == [[1]]
    assert one.keep.tolist() == [[0, 2, 6, 1, 3, 5]]  # unmerged A ascending ([CLS] first), then every B
    both = tome.bipartite_soft_matching(ORDER_METRIC, 2, order="official")
    assert both.keep.tolist() == [[0, 2, 1, 3, 5]]
    # step 2 on the official sequence [0, 2, 6, 1, 3, 5]: A = tokens {0, 6, 3}, B = tokens {2, 1, 5}
    metric2 = ORDER_METRIC[:, one.keep[0]]
    two = tome.bipartite_soft_matching(metric2, 1, order="official")
    seq = one.keep[0]
    assert seq[two.src].tolist() == [[6]] and seq[two.dst].tolist() == [[5]]  # 6 -> 5 (0.9) beats 3 -> 2 (0.8)
    assert seq[two.keep].tolist() == [[0, 3, 2, 1, 5]]
    # without a protected first token the unmerged A tokens come in edge order (best remaining edge first)
    free = tome.bipartite_soft_matching(ORDER_METRIC, 1, protect_first=False, order="official")
    assert free.keep.tolist() == [[6, 2, 0, 1, 3, 5]]


def test_raster_order_by_hand_after_one_and_two_merges():
    one = tome.bipartite_soft_matching(ORDER_METRIC, 1, order="raster")
    assert one.src.tolist() == [[4]] and one.keep.tolist() == [[0, 1, 2, 3, 5, 6]]
    # step 2 on [0, 1, 2, 3, 5, 6]: A = {0, 2, 5}, B = {1, 3, 6}: 5 -> 6 (0.9) beats 2 -> 3 (0.8)
    seq = one.keep[0]
    two = tome.bipartite_soft_matching(ORDER_METRIC[:, seq], 1, order="raster")
    assert seq[two.src].tolist() == [[5]] and seq[two.dst].tolist() == [[6]]
    assert seq[two.keep].tolist() == [[0, 1, 2, 3, 6]]


@pytest.mark.parametrize(
    "order,origins,groups,sizes",
    [
        # official: tokens [CLS, 3, 2, 1, 5] -> patches [2, 1, 0, 4]; patch 3 (token 4) is in token 1's slot
        ("official", [2, 1, 0, 4], [2, 1, 0, 2, 3, 3], [1, 1, 2, 2]),
        # raster: tokens [CLS, 1, 2, 3, 6] -> patches [0, 1, 2, 5]
        ("raster", [0, 1, 2, 5], [0, 1, 2, 0, 3, 3], [2, 1, 1, 2]),
    ],
)
def test_tome_merge_steps_track_origins_groups_and_sizes_in_both_orders(order, origins, groups, sizes):
    from llava.compression.methods.tome import ToMeConfig
    from llava.compression.vision_encoder import LayerAttention

    config = ToMeConfig(tome_r=1, tome_token_order=order)
    x = torch.arange(7, dtype=torch.float32).reshape(1, 7, 1) * 10  # token t carries the value 10 t
    keys = ORDER_METRIC.clone()
    tokens = EncoderTokens.start(1, (2, 3))
    for layer in range(2):
        y = config.merge(x, LayerAttention(layer, None, keys, num_heads=1, scale=1.0), tokens, 1)
        keep = tome.bipartite_soft_matching(keys, 1, order=order).keep[0]
        x, keys = y, keys[:, keep]
    assert tokens.positions[0].tolist() == origins
    assert tokens.groups[0].tolist() == groups
    assert tokens.sizes[0, 1:].tolist() == sizes
    assert tokens.trace(0)["kept_indices"] == sorted(origins)
    # every output token's value is the size-weighted mean of the patches of its group
    for slot in range(4):
        members = [p + 1 for p in range(6) if groups[p] == slot]
        assert y[0, 1 + slot, 0].item() == pytest.approx(10 * sum(members) / len(members))
    assert y[0, 0, 0].item() == 0.0  # the [CLS] stays first and untouched
