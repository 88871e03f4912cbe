"""FLOPs / KV formula: hand-computed tiny geometry, the published reference points, per-layer counts."""

import pytest

from llava.bench import flops as F
from llava.bench.geometries import (
    BenchGeometry,
    geometry_for_checkpoint,
    get_geometry,
    next_geometry_for_image,
)
from llava.compression.registry import Stage, available_methods, get_method

T = 1e12

# A geometry small enough to count by hand: 28 px / patch 14 -> 2x2 = 4 patches (+ CLS = 5 tokens), vision width 8,
# MLP 16, 2 layers, 2 heads, feature layer -2 (= layer 0); projector 8 -> 16 -> 16; LLM width 16, 4 heads with 2 KV
# heads (D_kv = 2 * 16 / 4 = 8), SwiGLU 32, 2 layers, vocab 100; 3 text tokens.
HAND = BenchGeometry(
    name="hand", image_size=28, patch_size=14, vision_hidden=8, vision_intermediate=16, vision_layers=2,
    vision_heads=2, llm_hidden=16, llm_intermediate=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, vocab_size=100,
    text_tokens=3,
)


def test_hand_computed_unpruned():
    # vision, per layer with n = 5 tokens: 8 n C^2 + 4 n^2 C + 4 n C Hv = 8*5*64 + 4*25*8 + 4*5*8*16 = 2560+800+2560
    per_vision_layer = 2560 + 800 + 2560
    patch_embed = 2 * 4 * (3 * 14 * 14) * 8  # 37632
    vision = 2 * per_vision_layer + patch_embed  # 49472
    projector = 2 * 4 * (8 * 16 + 16 * 16)  # 3072
    # LLM, per layer with n = 4 visual + 3 text = 7: 2n(2D^2 + 2 D D_kv) + 4 n^2 D + 6 n D H
    per_llm_layer = 2 * 7 * (2 * 256 + 2 * 16 * 8) + 4 * 49 * 16 + 6 * 7 * 16 * 32  # 10752 + 3136 + 21504 = 35392
    llm = 2 * per_llm_layer
    lm_head = 2 * 16 * 100
    b = F.flops_breakdown("none", HAND)
    assert (b.vision, b.projector, b.llm, b.lm_head, b.method) == (vision, projector, llm, lm_head, 0)
    assert b.total == 126528 == F.prefill_flops(geometry=HAND)
    assert F.prefill_flops(geometry=HAND, convention="llm") == 70784
    # KV: 2 layers x (keys + values) x 7 tokens x D_kv 8 values x 2 bytes
    assert F.kv_cache_bytes(b.counts, HAND) == 2 * 2 * 7 * 8 * 2 == 448
    assert F.kv_cache_bytes(b.counts, HAND, include_text=False) == 2 * 2 * 4 * 8 * 2


def test_hand_computed_pre_llm_and_in_llm():
    # FasterVLM keeping 2 of 4 patches: LLM n = 5 per layer, projector on 2 tokens, one [CLS] row 2 * 5 * 8 = 80
    per_llm_layer = 2 * 5 * (2 * 256 + 2 * 16 * 8) + 4 * 25 * 16 + 6 * 5 * 16 * 32  # 7680 + 1600 + 15360 = 24640
    b = F.flops_breakdown("fastervlm", HAND, {"visual_token_num": 2})
    assert b.projector == 2 * 2 * 384 and b.llm == 2 * per_llm_layer and b.method == 80
    assert b.total == 49472 + 1536 + 49280 + 3200 + 80
    assert b.counts.visual_tokens_per_layer == [2, 2]
    # FastV before layer 1 keeping 2: layer 0 sees 7 tokens, layer 1 sees 5; one query row of layer 0 from its own
    # q_proj (2 D^2 = 512) against 7 cached keys (2 * 7 * D = 224)
    b = F.flops_breakdown("fastv", HAND, {"fastv_k": 1, "visual_token_num": 2})
    assert b.counts.visual_tokens_per_layer == [4, 2]
    assert b.llm == 35392 + 24640 and b.method == 512 + 224 and b.projector == 3072
    assert F.kv_cache_bytes(b.counts, HAND) == (7 + 5) * 2 * 8 * 2


@pytest.mark.skipif("ficoco-l" not in available_methods(), reason="ficoco-l not registered")
def test_hand_computed_ficoco_l_overhead():
    # FiCoCo-L merging 4 -> 2 before layer 1: 4 visual + 1 following text query (layer 0's q_proj outputs are
    # captured from its forward, keys come from the cache: no 2 Q D^2 term) over all 7 tokens 2 * 5 * 7 * 16 = 1120,
    # the text-bridged correlation 2 * 4 * 1 * 4 = 32 and the compress step 2 * r (N - r) D = 2 * 2 * 2 * 16 = 128
    b = F.flops_breakdown("ficoco-l", HAND, {"ficoco_start_layer": 1, "visual_token_num": 2})
    assert b.counts.visual_tokens_per_layer == [4, 2]
    assert b.method == 1120 + 32 + 128 == F.ficoco_l_step_flops(HAND, 4, 3, 1, 2)


def test_llm_viewer_reference_points():
    g = get_geometry("llava-1.5-7b")
    # F(n) = L [2 n (4 D^2 + 3 D H) + 4 n^2 D], D = 4096, H = 11008, L = 32, n = 576 + 60
    n = 636
    closed = 32 * (2 * n * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * n * n * 4096)
    assert F.prefill_flops(576, "none", checkpoint="llava-v1.5-7b", convention="llm") == closed == 8_449_551_237_120
    assert round(closed / T, 1) == pytest.approx(8.4) and abs(closed / T - 8.5) < 0.06  # paper: "8.5 T"
    llm = {k: F.prefill_flops(k, "fastervlm", checkpoint="llava-v1.5-7b", convention="llm") / T for k in (192, 128, 64)}
    assert llm[192] == pytest.approx(3.30, abs=0.01)  # paper: 3.3
    assert llm[128] == pytest.approx(2.45, abs=0.01)  # paper: 2.4
    assert llm[64] == pytest.approx(1.61, abs=0.01)  # paper: 1.5 (= 55 tokens, below)
    # inverting the published budgets with 60 text tokens (spec: 192 / 124 / 55)
    assert [F.visual_tokens_for_flops(t * T, g) for t in (3.3, 2.4, 1.5)] == [192, 124, 55]
    # LLaVA-NeXT-7B 2880 tokens: 42.7 T; Video-LLaVA 2048 tokens: 29.7 T, 136 tokens: 2.6 T
    assert F.prefill_flops(geometry="llava-next-7b", convention="llm") / T == pytest.approx(42.7, abs=0.1)
    assert F.prefill_flops(geometry="video-llava-7b", convention="llm") / T == pytest.approx(29.7, abs=0.1)
    assert F.llm_viewer_flops(136 + 60, "video-llava-7b") / T == pytest.approx(2.6, abs=0.05)


def test_kv_reference_points():
    g = get_geometry("llava-1.5-7b")
    # FiCoCo (LLM-Viewer, fp16): 333 MB at 576 + 60 tokens, 65.0 MB at 64 + 60
    assert F.kv_cache_bytes(F.token_counts("none", g), g) / 1e6 == pytest.approx(333.4, abs=0.1)
    assert F.kv_cache_bytes(F.token_counts("fastervlm", g, {"visual_token_num": 64}), g) / 1e6 == pytest.approx(
        65.0, abs=0.05)
    # FasterVLM LLaVA-NeXT storage counts visual tokens only: 2880 -> 1440 MiB, 720 (144 per crop) -> 360 MiB
    nxt = get_geometry("llava-next-7b")
    mib = 2**20
    assert F.kv_cache_bytes(F.token_counts("none", nxt), nxt, include_text=False) / mib == 1440
    c = F.token_counts("fastervlm", nxt, {"visual_token_num": 144})
    assert c.visual_tokens == 720 and F.kv_cache_bytes(c, nxt, include_text=False) / mib == 360


def test_full_convention_components():
    g = get_geometry("llava-1.5-7b")
    b = F.flops_breakdown("none", g)
    assert b.vision / T == pytest.approx(0.3815, abs=0.001)  # CLIP-L/336, all 24 layers
    assert b.projector == 2 * 576 * (1024 * 4096 + 4096 * 4096)
    assert b.total / T == pytest.approx(8.856, abs=0.001)
    d = F.flops_breakdown("divprune", g, {"visual_token_num": 64})
    assert d.projector == b.projector  # projected-space distances project every patch
    assert d.method == pytest.approx(2 * 576 * 576 * 4096 + 2 * 64 * 576)


def _llm_methods():
    return [m for m in available_methods() if Stage.LLM in get_method(m).stages]


@pytest.mark.parametrize("budget", [64, 128, 192])
def test_every_registered_method_is_counted(budget):
    g = get_geometry("llava-1.5-7b")
    rows = F.table_rows(g, F.sweep_methods("all"), [budget])
    assert {r["method"] for r in rows} == set(available_methods())
    for r in rows:
        assert "error" not in r, r
        assert 0 < r["tflops"] < 8.9 and r["breakdown"]["method_overhead"] >= 0
        per_layer = r["breakdown"]["visual_tokens_per_layer"]
        assert len(per_layer) == 32 and all(a >= b for a, b in zip(per_layer, per_layer[1:]))


def test_in_llm_per_layer_counts():
    g = get_geometry("llava-1.5-7b")
    methods = set(_llm_methods())
    assert {"fastv", "pdrop", "sparsevlm", "dart"} <= methods

    def per_layer(method, **args):
        return F.token_counts(method, g, args).visual_tokens_per_layer

    assert per_layer("fastv", visual_token_num=64) == [576] * 2 + [64] * 30
    assert per_layer("fastv") == [576] * 2 + [288] * 30  # R = 0.5
    assert per_layer("dart", visual_token_num=128) == [576] * 2 + [132] * 30  # p + (p + q) k = 4 + 8 * 16
    # SparseVLM v1.5 "192": keep 300 / 200 / 110 after layers 2 / 6 / 15 plus recycled cluster means:
    # P = 276 pruned -> top 83 -> 9 clusters; 309 -> 200 + (109 -> 33 -> 4); 204 -> 110 + (94 -> 29 -> 3)
    assert per_layer("sparsevlm", visual_token_num=192) == [576] * 3 + [309] * 4 + [204] * 9 + [113] * 16
    # PyramidDrop with the author's small-budget layers: int(576 lambda^s) after each stage, T_eq ~ 128
    args = {"visual_token_num": 128, "pdrop_layers": "2,8,16"}
    counts = F.token_counts("pdrop", g, args)
    lam = F.build_config("pdrop", g, args).ratio(F.llm_geometry(g))  # solved: ~0.42 (spec section 2.6)
    assert lam == pytest.approx(0.42, abs=0.01)
    assert counts.visual_tokens_per_layer[:2] == [576, 576]
    assert counts.visual_tokens_per_layer[2:8] == [int(576 * lam)] * 6
    assert counts.visual_tokens_per_layer[8] == int(576 * lam**2) and counts.visual_tokens_per_layer[-1] == int(
        576 * lam**3)
    assert counts.avg_visual_tokens == pytest.approx(128, abs=1)
    assert counts.overhead_flops > 0  # the next layer's keys are recomputed at every boundary
    if "ficoco-l" in methods:
        c = per_layer("ficoco-l", visual_token_num=64)
        assert c[:4] == [576] * 4 and c[-1] == 64 and len(set(c[4:])) == 28  # merges before every layer 4..31


def test_budget_args_scale_in_llm_layers():
    assert F.budget_args("fastv", 64, 32, 2) == {"visual_token_num": 64, "fastv_k": 1}
    assert F.budget_args("pdrop", 64, 32, 8) == {"visual_token_num": 64, "pdrop_layers": "1,2,4"}
    assert F.budget_args("sparsevlm", 64, 32, 2) == {"sparsevlm_layers": "0", "sparsevlm_counts": "66"}
    assert F.budget_args("fastervlm", 720, 32, 2, images=5) == {"visual_token_num": 144}
    assert F.budget_args("fastv", 64) == {"visual_token_num": 64}
    if "ficoco-vl" in available_methods():
        args = F.budget_args("ficoco-vl", 64, 32, 2)
        assert args["ficoco_llm_start_layer"] == 1 and "ficoco_vision_start_layer" not in args


def test_summarize_signature():
    from llava.eval import summarize

    fn = summarize.flops_function()
    assert fn is F.prefill_flops
    rec = {"visual_tokens": 144, "method": "fastervlm", "method_args": {}, "checkpoint": "llava-v1.5-7b",
           "benchmark": "pope"}
    assert summarize._flops(fn, rec) == F.prefill_flops(visual_tokens=144, method="fastervlm",
                                                         checkpoint="llava-v1.5-7b")
    # a results file's method_args list every field; PruMerge's unset budget means "its own adaptive count"
    adaptive = F.prefill_flops(40, "prumerge", {"visual_token_num": None, "prumerge_knn": 32}, "llava-v1.5-7b")
    assert adaptive == F.prefill_flops(40, "prumerge", {"visual_token_num": 40}, "llava-v1.5-7b")
    # PruMerge+'s default fixed-budget rule lands near T: the observed count is what is counted
    near = F.prefill_flops(266, "prumerge+", {"visual_token_num": 192}, "llava-v1.5-7b")
    assert near == F.prefill_flops(266, "prumerge+", {"visual_token_num": None}, "llava-v1.5-7b")
    exact = {"visual_token_num": 192, "prumerge_budget_rule": "exact-count"}
    assert F.prefill_flops(266, "prumerge+", exact, "llava-v1.5-7b") == F.prefill_flops(
        192, "prumerge+", exact, "llava-v1.5-7b"
    )
    # visionzip's method_args carry derived keys (dominant / contextual) that are not config fields
    vz = {"visual_token_num": 64, "contextual_tokens": None, "visionzip_cls": True, "dominant": 54, "contextual": 10}
    assert F.prefill_flops(64, "visionzip", vz, "llava-v1.5-7b") > 0
    with pytest.raises(F.FlopsError):
        F.prefill_flops(64, "fastervlm", {}, "some-unknown-model")


def test_checkpoint_names():
    assert geometry_for_checkpoint("liuhaotian/llava-v1.5-13b").llm_layers == 40
    assert geometry_for_checkpoint("llava-v1.6-vicuna-7b").visual_tokens == 2880
    assert geometry_for_checkpoint("Video-LLaVA-7B").visual_tokens == 2048
    assert geometry_for_checkpoint("llava-v1.5-7b-fastervlm").name == "llava-1.5-7b"


def test_flops_cli(capsys):
    assert F.main(["--model-config", "llava-1.5-7b", "--methods", "none,fastervlm", "--tokens", "64"]) == 0
    out = capsys.readouterr().out
    assert "| fastervlm | 64 | 64 | 64.0 |" in out and "| none |" in out


@pytest.mark.parametrize("size, crops, rows, cols", [
    ((672, 672), 5, 48, 48),  # 2 x 2 grid, nothing unpadded
    ((480, 640), 5, 36, 48),  # 2 x 2 grid, 48 columns -> 480 * 48 / 640 = 36 rows
    ((336, 1008), 4, 24, 72),  # 1 x 3 grid
])
def test_next_anyres_geometry_counts_unpadded_tokens_and_newlines(size, crops, rows, cols):
    g = next_geometry_for_image(size)
    counts = F.token_counts("none", g)
    assert g.images_per_sample == crops
    assert counts.visual_tokens == 576 + rows * cols + rows  # base crop + unpadded map + one newline per row
    assert counts.projector_tokens == crops * 576  # every crop is projected before unpadding
    n = counts.visual_tokens + 60
    closed = 32 * (2 * n * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * n * n * 4096)
    assert F.prefill_flops(geometry=g, convention="llm") == closed
    assert F.flops_breakdown("none", g).vision == crops * F.flops_breakdown("none", "llava-1.5-7b").vision


@pytest.mark.parametrize("size", [(672, 672), (480, 640), (336, 1008), (90, 120)])
def test_next_fixed_grid_is_2880_and_the_published_42_7_t(size):
    g = next_geometry_for_image(size, mode="fixed-672")
    assert g.visual_tokens == 2880 and g.images_per_sample == 5
    n = 2880 + 60
    closed = 32 * (2 * n * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * n * n * 4096)
    assert F.prefill_flops(geometry=g, convention="llm") == closed == F.prefill_flops(geometry="llava-next-7b",
                                                                                      convention="llm")
    assert closed / T == pytest.approx(42.7, abs=0.1)  # FiCoCo: LLaVA-NeXT-7B vanilla 42.7 T


def test_flops_cli_counts_one_next_image(capsys):
    assert F.main(["--model-config", "llava-next-7b", "--image-size", "480x640", "--methods", "none"]) == 0
    out = capsys.readouterr().out
    assert "| none |  | 2340 |" in out  # 576 + 36 rows x 48 + 36 newlines
    assert F.main(["--model-config", "llava-next-7b", "--image-size", "480x640", "--next-grid", "fixed-672",
                   "--methods", "none"]) == 0
    assert "| none |  | 2880 |" in capsys.readouterr().out
    assert F.main(["--model-config", "llava-1.5-7b", "--image-size", "480x640"]) == 2
    assert F.main(["--model-config", "llava-next-7b", "--image-size", "480"]) == 2
    err = capsys.readouterr().err
    assert "LLaVA-NeXT geometries only" in err and "height x width" in err


def test_a_next_checkpoint_folder_counts_five_crops(tiny_next_hf, tiny_next_original, tiny_hf):
    hf, original = geometry_for_checkpoint(tiny_next_hf), geometry_for_checkpoint(tiny_next_original)
    assert hf.images_per_sample == original.images_per_sample == 5
    assert hf.visual_tokens == 5 * hf.patches_per_image
    assert geometry_for_checkpoint(tiny_hf).images_per_sample == 1
