"""Every built-in method's reducer on random tensors against an independent slow reference in this file.

The references use float64 and plain Python loops / sorting and share no code with the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llava.compression import make_config
from llava.compression.pre_llm import VisionSignals
from llava.compression.registry import CompressionConfigError, ModelGeometry

GRID = (6, 6)
N = 36
C = 16
HEADS = 4
LAYERS = 6  # encoder layers 0..5
FEATURE_LAYER = 4  # vision_feature_layer = -2 -> output of layer 4
GEOMETRY = ModelGeometry(
    num_patches=N, grid=GRID, vision_layers=LAYERS, llm_layers=2, vision_feature_layer=-2
)


def random_signals(batch: int = 2, seed: int = 0) -> VisionSignals:
    g = torch.Generator().manual_seed(seed)
    proj = torch.nn.Sequential(torch.nn.Linear(C, 24), torch.nn.GELU(), torch.nn.Linear(24, 24))
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return VisionSignals(
        tokens=torch.randn(batch, N + 1, C, generator=g),
        grid=GRID,
        feature_layer=FEATURE_LAYER,
        num_layers=LAYERS,
        num_heads=HEADS,
        queries={layer: 2.0 * torch.randn(batch, 1, C, generator=g) for layer in range(LAYERS)},
        keys={layer: torch.randn(batch, N + 1, C, generator=g) for layer in range(LAYERS)},
        project=lambda t: proj(t),
    )


# -- references ------------------------------------------------------------------------------------------------


def ref_cls_rows(q, k, heads):
    """[H][N+1] float64 softmax rows of one image, by explicit loops."""
    q, k = q.double().reshape(-1).tolist(), k.double().tolist()
    d = len(q) // heads
    rows = []
    for h in range(heads):
        logits = [sum(q[h * d + t] * kj[h * d + t] for t in range(d)) / math.sqrt(d) for kj in k]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        rows.append([v / sum(e) for v in e])
    return rows


def ref_head_mean_patch(sig, layer, b):
    rows = ref_cls_rows(sig.queries[layer][b], sig.keys[layer][b], HEADS)
    return [sum(r[j] for r in rows) / HEADS for j in range(1, N + 1)]


def ref_top(scores, k):
    """Top-k by descending score, ties to the lower index, in rank order."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]


def ref_cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- FasterVLM / VTC-CLS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 5, 17, N])
def test_fastervlm_matches_reference(budget):
    sig = random_signals()
    out = make_config("fastervlm", GEOMETRY, visual_token_num=budget).reduce(sig)
    for b in range(2):
        keep = sorted(ref_top(ref_head_mean_patch(sig, FEATURE_LAYER, b), budget))
        assert out.kept_indices[b].tolist() == keep
        torch.testing.assert_close(out.features[b], sig.patches[b, keep])
        assert out.trace(b) == {"visual_tokens": budget, "kept_indices": keep}


@pytest.mark.parametrize("ensemble", ["mean", "sum", "max", "min"])
def test_vtc_cls_matches_reference(ensemble):
    sig = random_signals(seed=1)
    start, budget = 1, 9
    out = make_config(
        "vtc-cls", GEOMETRY, visual_token_num=budget, start_layer=start, ensemble=ensemble
    ).reduce(sig)
    combine = {"mean": lambda v: sum(v) / len(v), "sum": sum, "max": max, "min": min}[ensemble]
    for b in range(2):
        per_layer = [ref_head_mean_patch(sig, layer, b) for layer in range(start, FEATURE_LAYER + 1)]
        scores = [combine([s[j] for s in per_layer]) for j in range(N)]
        assert out.kept_indices[b].tolist() == sorted(ref_top(scores, budget))


def test_vtc_cls_at_the_feature_layer_is_fastervlm():
    sig = random_signals(seed=2)
    for budget in (3, 10, 30):
        fast = make_config("fastervlm", GEOMETRY, visual_token_num=budget).reduce(sig)
        for ens in ("mean", "sum", "max", "min"):
            vtc = make_config(
                "vtc-cls", GEOMETRY, visual_token_num=budget, start_layer=FEATURE_LAYER, ensemble=ens
            ).reduce(sig)
            assert [t.tolist() for t in vtc.kept_indices] == [t.tolist() for t in fast.kept_indices]


# -- PruMerge / PruMerge+ ----------------------------------------------------------------------------------------------


def ref_prumerge(sig, b, centres_fn, knn):
    layer = FEATURE_LAYER + 1
    q = sig.queries[layer][b].double().reshape(-1).numpy()
    k = sig.keys[layer][b].double().numpy()
    logits = k @ q / math.sqrt(C)
    p = np.exp(logits - logits.max())
    attn = (p / p.sum())[1:]
    centres = centres_fn(attn)
    x = sig.patches[b].double().numpy()
    keys = k[1:]
    n = len(attn)
    rows = []
    for i in centres:
        sims = [(ref_cos(keys[i], keys[j]), j) for j in range(n) if j != i]
        nb = [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))[:knn]]
        rows.append(x[i] + sum(attn[j] * x[j] for j in nb))
    rows.append(sum(attn[j] * x[j] for j in range(n) if j not in centres))
    return centres, np.stack(rows)


def ref_iqr_top(attn):
    q1, q3 = np.percentile(attn, [25, 75])
    count = max(1, int((attn > q3 + 1.5 * (q3 - q1)).sum()))
    return ref_top(list(attn), count)


def outlier_signals(seed):
    """Random signals where a few patches get a large [CLS] attention (so the IQR budget is > 1)."""
    sig = random_signals(seed=seed)
    layer = FEATURE_LAYER + 1
    for b in range(2):
        q = sig.queries[layer][b, 0]
        for j in (3, 11, 20, 29):
            sig.keys[layer][b, 1 + j] += 0.4 * q
    return sig


@pytest.mark.parametrize("order", ["rank", "raster"])
def test_prumerge_adaptive_matches_reference(order):
    sig = outlier_signals(3)
    out = make_config("prumerge", GEOMETRY, prumerge_knn=5, token_order=order).reduce(sig)
    for b in range(2):
        centres, rows = ref_prumerge(sig, b, ref_iqr_top, 5)
        assert len(centres) > 1
        if order == "raster":
            perm = sorted(range(len(centres)), key=lambda i: centres[i])
            rows = np.concatenate([rows[:-1][perm], rows[-1:]])
        assert out.kept_indices[b].tolist() == sorted(centres)
        torch.testing.assert_close(out.features[b].double(), torch.from_numpy(rows), rtol=1e-4, atol=1e-4)
        assert out.trace(b)["visual_tokens"] == len(centres) + 1


def test_prumerge_budget_counts_the_extra_token():
    sig = random_signals(seed=4)
    out = make_config("prumerge", GEOMETRY, visual_token_num=8, prumerge_knn=4).reduce(sig)
    for b in range(2):
        centres, rows = ref_prumerge(sig, b, lambda a: ref_top(list(a), 7), 4)
        assert out.features[b].shape[0] == 8
        torch.testing.assert_close(out.features[b].double(), torch.from_numpy(rows), rtol=1e-4, atol=1e-4)


def test_prumerge_plus_adaptive_matches_reference():
    sig = outlier_signals(5)

    def centres_fn(attn):
        top = ref_iqr_top(attn)
        stride = max(1, (N // len(top)) // 3)
        return top + [j for j in range(0, N - 1, stride) if j not in top]

    out = make_config("prumerge+", GEOMETRY, prumerge_knn=6).reduce(sig)
    for b in range(2):
        centres, rows = ref_prumerge(sig, b, centres_fn, 6)
        assert out.kept_indices[b].tolist() == sorted(centres)
        torch.testing.assert_close(out.features[b].double(), torch.from_numpy(rows), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("budget,ratio", [(12, 0.5), (9, 0.25), (N, 1.0)])
def test_prumerge_plus_budget_matches_reference(budget, ratio):
    sig = random_signals(seed=6)

    def centres_fn(attn):
        n = budget - 1
        n_top = min(n, max(1, math.ceil(n * ratio)))
        top = ref_top(list(attn), n_top)
        cands = [j for j in range(N) if j not in top]
        m, k = len(cands), n - n_top
        return top + [cands[int((i + 0.5) * m / k)] for i in range(k)]

    cfg = make_config(
        "prumerge+",
        GEOMETRY,
        visual_token_num=budget,
        prumerge_budget_rule="exact-count",
        prumerge_top_ratio=ratio,
        prumerge_knn=3,
    )
    out = cfg.reduce(sig)
    for b in range(2):
        centres, rows = ref_prumerge(sig, b, centres_fn, 3)
        assert out.features[b].shape[0] == budget
        assert out.kept_indices[b].tolist() == sorted(centres)
        torch.testing.assert_close(out.features[b].double(), torch.from_numpy(rows), rtol=1e-4, atol=1e-4)


# PruMerge+ at a fixed budget, the VTC-CLS repository's rule (the published 64 / 128 / 256 rows). The expected kept
# sets are written out by hand: the top c indices of a hand-made score vector, then the multiples of s // 3 below
# 575 that are not among them.
MULTIPLES_OF_11 = [11 * i for i in range(53)]  # 0, 11, ..., 572
MULTIPLES_OF_6 = [6 * i for i in range(96)]  # 0, 6, ..., 570
MULTIPLES_OF_3 = [3 * i for i in range(192)]  # 0, 3, ..., 573
HAND_TOP = [574, 22, 301, 0, 402, 11, 503, 5, 17, 250, 333, 200, 100]  # best first; 0, 11, 22 are on the 11-grid


def hand_scores(top: list[int]) -> torch.Tensor:
    """576 scores: ``top`` get 100, 99.9, 99.8, ... (in that order), every other patch a distinct value in [0, 1]."""
    scores = torch.linspace(0.0, 1.0, 576)
    for rank, j in enumerate(top):
        scores[j] = 100.0 - 0.1 * rank
    return scores


LLAVA_GEOMETRY = ModelGeometry()


def test_prumerge_plus_vtc_cls_rule_at_64_by_hand():
    cfg = make_config("prumerge+", LLAVA_GEOMETRY, visual_token_num=64)
    assert cfg.prumerge_budget_rule == "vtc-cls"
    centres = cfg.centres(hand_scores(HAND_TOP)).tolist()
    expected = HAND_TOP + [j for j in MULTIPLES_OF_11 if j not in (0, 11, 22)]
    assert centres == expected  # top 13 in rank order, then the 50 grid indices not already taken
    assert len(centres) + 1 == 64  # + the extra token


@pytest.mark.parametrize("budget", [128, 192, 256])
def test_prumerge_plus_vtc_cls_rule_at_other_budgets_by_hand(budget):
    top_count, grid = (40, MULTIPLES_OF_6) if budget == 128 else (95, MULTIPLES_OF_3)
    top = [575 - 2 * i for i in range(top_count)]  # 575, 573, ...: odd, so none on the 6-grid, 32 on the 3-grid
    cfg = make_config("prumerge+", LLAVA_GEOMETRY, visual_token_num=budget)
    centres = cfg.centres(hand_scores(top)).tolist()
    assert centres == top + [j for j in grid if j not in top]
    assert len(centres) + 1 == {128: 40 + 96 + 1, 192: 95 + 192 - 32 + 1, 256: 95 + 192 - 32 + 1}[budget]


def llava_sized_signals(boosted: list[list[int]], seed: int = 11) -> VisionSignals:
    """Random signals on a 24x24 grid where image ``b``'s patches ``boosted[b]`` get the highest scores."""
    g = torch.Generator().manual_seed(seed)
    n, batch = 576, len(boosted)
    layer = FEATURE_LAYER + 1
    queries = {layer: 2.0 * torch.randn(batch, 1, C, generator=g)}
    keys = {layer: torch.randn(batch, n + 1, C, generator=g)}
    for b, patches in enumerate(boosted):
        q = queries[layer][b, 0]
        for j in patches:
            keys[layer][b, 1 + j] += q
    return VisionSignals(
        tokens=torch.randn(batch, n + 1, C, generator=g),
        grid=(24, 24),
        feature_layer=FEATURE_LAYER,
        num_layers=LAYERS,
        num_heads=HEADS,
        queries=queries,
        keys=keys,
    )


def test_prumerge_plus_vtc_cls_rule_count_is_real_and_per_image():
    geometry = ModelGeometry(grid=(24, 24), vision_layers=LAYERS, llm_layers=2)
    # image 0: none of its top 13 on the 11-grid -> 13 + 53 + 1 = 67 tokens; image 1: five of them -> 62
    off_grid = [j for j in range(1, 15) if j != 11]
    on_grid = [0, 11, 22, 33, 44] + [2 + 2 * i for i in range(8)]
    sig = llava_sized_signals([off_grid, on_grid])
    out = make_config("prumerge+", geometry, visual_token_num=64, prumerge_knn=4).reduce(sig)
    for b, top in enumerate([off_grid, on_grid]):

        def centres_fn(attn, top=top):
            best = ref_top(list(attn), 13)
            assert sorted(best) == sorted(top)  # the boost made these the top 13
            return best + [j for j in MULTIPLES_OF_11 if j not in best]

        centres, rows = ref_prumerge(sig, b, centres_fn, 4)
        assert out.kept_indices[b].tolist() == sorted(centres)
        torch.testing.assert_close(out.features[b].double(), torch.from_numpy(rows), rtol=1e-4, atol=1e-4)
    assert [out.trace(b)["visual_tokens"] for b in range(2)] == [67, 62]


def test_prumerge_plus_exact_count_rule_is_an_option():
    cfg = make_config("prumerge+", LLAVA_GEOMETRY, visual_token_num=64, prumerge_budget_rule="exact-count")
    centres = cfg.centres(hand_scores(HAND_TOP))
    assert centres.numel() + 1 == 64 and centres.unique().numel() == 63
    assert centres[:13].tolist() == HAND_TOP  # top ceil(63 * 0.5) = 32 by score, then 31 spread patches
    assert centres[32:].tolist() == sorted(centres[32:].tolist())


# -- VisionZip -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total,contextual,cls", [(10, None, True), (12, 4, True), (7, 3, False), (5, 0, True)]
)
def test_visionzip_matches_reference(total, contextual, cls):
    sig = random_signals(seed=7)
    cfg = make_config(
        "visionzip", GEOMETRY, visual_token_num=total, contextual_tokens=contextual, visionzip_cls=cls
    )
    c = contextual if contextual is not None else round(total * 5 / 32)
    n_dom = total - c - (1 if cls else 0)
    out = cfg.reduce(sig)
    for b in range(2):
        scores = [s * HEADS for s in ref_head_mean_patch(sig, FEATURE_LAYER, b)]
        dom = sorted(ref_top(scores, n_dom))
        rest = [j for j in range(N) if j not in dom]
        step = max(1, len(rest) // c) if c else 1
        targets = rest[::step][:c]
        keys = sig.keys[FEATURE_LAYER][b, 1:].double().view(N, HEADS, C // HEADS).mean(1).numpy()
        x = sig.patches[b].double().numpy()
        joined = {t: [] for t in targets}
        for j in rest:
            if j in targets or not targets:
                continue
            best = max(targets, key=lambda t: (ref_cos(keys[j], keys[t]), -t))
            joined[best].append(j)
        ctx = [x[t] + (np.mean([x[j] for j in joined[t]], axis=0) if joined[t] else 0.0) for t in targets]
        rows = ([sig.tokens[b, 0].double().numpy()] if cls else []) + [x[j] for j in dom] + ctx
        assert out.features[b].shape[0] == total
        torch.testing.assert_close(
            out.features[b].double(), torch.from_numpy(np.stack(rows)), rtol=1e-5, atol=1e-5
        )
        assert out.kept_indices[b].tolist() == sorted(dom + targets)


# -- DivPrune -------------------------------------------------------------------------------------------------------


def ref_divprune(tokens, k):
    e = tokens.double().numpy()
    n = len(e)
    d = [[1.0 - ref_cos(e[i], e[j]) for j in range(n)] for i in range(n)]
    nearest = [min(d[i][j] for i in range(n) if i != j) for j in range(n)]
    picks = [max(range(n), key=lambda j: (nearest[j], -j))]
    while len(picks) < k:
        cand = [j for j in range(n) if j not in picks]
        picks.append(max(cand, key=lambda j: (min(d[s][j] for s in picks), -j)))
    return sorted(picks)


@pytest.mark.parametrize("space", ["vision", "projected"])
def test_divprune_matches_reference(space):
    sig = random_signals(seed=8)
    out = make_config("divprune", GEOMETRY, visual_token_num=10, divprune_space=space).reduce(sig)
    assert out.projected == (space == "projected")
    for b in range(2):
        tokens = sig.project(sig.patches[b]).detach() if space == "projected" else sig.patches[b]
        keep = ref_divprune(tokens, 10)
        assert out.kept_indices[b].tolist() == keep
        torch.testing.assert_close(out.features[b], tokens[keep])


def upstream_fp16_distances(tokens):
    """DivPrune's ``pairwise_cosine_similarity`` as upstream writes it, on fp16 tensors (PyTorch's own fp16 ops)."""
    h = tokens.detach().to(torch.float16)
    unit = h / h.norm(dim=1, keepdim=True)
    return 1.0 - torch.mm(unit, unit.t())


def upstream_divprune_picks(distances, k):
    """Upstream's loop, literally: first pick = argmax of each column's second-smallest entry (diagonal included),
    then argmax over all columns of the minimum over the picked rows (first index on ties)."""
    d = distances.float().tolist()
    n = len(d)
    second = [sorted(d[i][j] for i in range(n))[1] for j in range(n)]
    picks = [max(range(n), key=lambda j: (second[j], -j))]
    while len(picks) < k:
        picks.append(max(range(n), key=lambda j: (min(d[s][j] for s in picks), -j)))
    return picks


@pytest.mark.parametrize("space", ["vision", "projected"])
def test_divprune_fp16_matches_upstreams_half_precision_loop(space):
    from llava.compression.methods.divprune import cosine_distance_fp16

    sig = random_signals(seed=8)
    cfg = make_config("divprune", GEOMETRY, visual_token_num=10, divprune_space=space, divprune_precision="fp16")
    out = cfg.reduce(sig)
    for b in range(2):
        tokens = sig.project(sig.patches[b]).detach() if space == "projected" else sig.patches[b]
        upstream = upstream_fp16_distances(tokens)
        mine = cosine_distance_fp16(tokens)
        assert mine.dtype == torch.float16 and torch.equal(mine, upstream)  # bit for bit
        picks = upstream_divprune_picks(upstream, 10)
        assert len(set(picks)) == 10  # no re-pick on this data
        assert out.kept_indices[b].tolist() == sorted(picks)
        torch.testing.assert_close(out.features[b], tokens[sorted(picks)])


def test_divprune_fp16_picks_differ_from_fp32_on_near_ties():
    def at(degrees, radius):
        return [radius * math.cos(math.radians(degrees)), radius * math.sin(math.radians(degrees)), 0.0]

    # token 0 is the most isolated (first pick in both); 1 and 2 lie 120 and 120.02 degrees away from it: distance
    # 1.5 vs 1.50030 in fp32, both 1.5 in fp16 (spacing 0.00098 there), so fp16 takes the lower index
    patches = torch.tensor([at(0, 2.0), at(120, 0.7), at(-120.02, 1.3), at(119, 1.0), at(-119, 3.0)])
    sig = VisionSignals(
        tokens=torch.cat([torch.ones(1, 3), patches])[None],
        grid=(1, 5),
        feature_layer=FEATURE_LAYER,
        num_layers=LAYERS,
        num_heads=1,
    )
    geometry = ModelGeometry(num_patches=5, grid=(1, 5), vision_layers=LAYERS, llm_layers=2)
    kept = {
        precision: make_config(
            "divprune", geometry, visual_token_num=2, divprune_space="vision", divprune_precision=precision
        ).reduce(sig).kept_indices[0].tolist()
        for precision in ("fp32", "fp16")
    }
    assert kept == {"fp32": [0, 2], "fp16": [0, 1]}
    assert make_config("divprune", geometry, visual_token_num=2).divprune_precision == "fp32"  # the default


# -- random / pool --------------------------------------------------------------------------------------------------


def test_random_is_seeded_per_image_and_batch_independent():
    sig = random_signals(batch=3, seed=9)
    sig.image_keys = [11, 22, 11]
    cfg = make_config("random", GEOMETRY, visual_token_num=7, seed=5)
    out = cfg.reduce(sig)
    kept = [t.tolist() for t in out.kept_indices]
    assert kept[0] == kept[2] != kept[1]
    for k in kept:
        assert k == sorted(set(k)) and len(k) == 7
    single = random_signals(batch=1, seed=9)
    single.image_keys = [22]
    assert cfg.reduce(single).kept_indices[0].tolist() == kept[1]
    other_seed = make_config("random", GEOMETRY, visual_token_num=7, seed=6).reduce(sig)
    assert other_seed.kept_indices[0].tolist() != kept[0]


def test_pool_matches_reference():
    sig = random_signals(seed=10)
    out = make_config("pool", GEOMETRY, visual_token_num=6).reduce(sig)  # 6x6 -> 2x3
    x = sig.patches.double().view(2, 6, 6, C)
    for b in range(2):
        rows = [
            x[b, 3 * i : 3 * i + 3, 2 * j : 2 * j + 2].reshape(-1, C).mean(0)
            for i in range(2)
            for j in range(3)
        ]
        torch.testing.assert_close(out.features[b].double(), torch.stack(rows), rtol=1e-6, atol=1e-6)
        assert out.kept_indices[b].tolist() == [
            1 * 6 + 0,
            1 * 6 + 2,
            1 * 6 + 4,
            4 * 6 + 0,
            4 * 6 + 2,
            4 * 6 + 4,
        ]
        assert out.trace(b)["pool_grid"] == [2, 3]


def test_pool_grid_choice():
    from llava.compression.methods.pool import pool_grid

    assert pool_grid(64, (24, 24)) == (8, 8)
    assert pool_grid(144, (24, 24)) == (12, 12)
    assert pool_grid(128, (24, 24)) == (8, 16)
    assert pool_grid(192, (24, 24)) == (12, 16)
    assert pool_grid(576, (24, 24)) == (24, 24)
    assert pool_grid(58, (24, 24)) is None


def test_groups_cover_outputs():
    """Every output token of every method owns at least one patch in ``groups`` (drawing consistency)."""
    sig = outlier_signals(11)
    for name, kw in [
        ("fastervlm", {"visual_token_num": 5}),
        ("prumerge", {"prumerge_knn": 3}),
        ("prumerge+", {"visual_token_num": 10, "prumerge_budget_rule": "exact-count"}),  # VTC-CLS rule: 576 only
        ("visionzip", {"visual_token_num": 12, "contextual_tokens": 3, "visionzip_cls": False}),
        ("pool", {"visual_token_num": 9}),
        ("divprune", {"visual_token_num": 4}),
    ]:
        out = make_config(name, GEOMETRY, **kw).reduce(sig)
        for b in range(2):
            g = out.groups[b]
            assert g.shape == (N,)
            owned, outputs = set(g[g >= 0].tolist()), set(range(out.features[b].shape[0]))
            if name.startswith("prumerge"):  # the extra token may own no patch of its own
                outputs.discard(out.features[b].shape[0] - 1)
                owned.discard(out.features[b].shape[0] - 1)
            assert owned == outputs, name


def test_prumerge_plus_vtc_cls_rule_needs_the_grid_it_was_made_for():
    """The rule's constants (``range(0, 575, s // 3)``) are for 576 patches: elsewhere one clear error naming the fix."""
    with pytest.raises(CompressionConfigError, match="576 patches.*this model gives 25 .*exact-count"):
        make_config("prumerge+", ModelGeometry(num_patches=25, grid=(5, 5)), visual_token_num=10)
    make_config("prumerge+", ModelGeometry(num_patches=25, grid=(5, 5)), visual_token_num=10,
                prumerge_budget_rule="exact-count")
    make_config("prumerge+", ModelGeometry(num_patches=25, grid=(5, 5)))  # adaptive: no budget rule involved
