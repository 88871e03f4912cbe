"""ToMe's pure functions and the in-encoder layer step: matching by hand, mass conservation, proportional attention."""

from __future__ import annotations

import copy

import torch
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from llava.compression import tome
from llava.compression.integrations.clip_merging import _merging_layer_forward
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
    plan = tome.bipartite_soft_matching(METRIC, 1)
    assert (
        plan.src.tolist() == [[2]] and plan.dst.tolist() == [[1]] and plan.keep.tolist() == [[0, 1, 3, 4, 5]]
    )
    plan = tome.bipartite_soft_matching(METRIC, 2)
    assert (
        plan.src.tolist() == [[2, 4]]
        and plan.dst.tolist() == [[1, 5]]
        and plan.keep.tolist() == [[0, 1, 3, 5]]
    )
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
        tome.bipartite_soft_matching(METRIC, 1),
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
