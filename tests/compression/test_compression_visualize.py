"""``python -m llava.compression.visualize`` on a saved tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.compression import visualize


@pytest.fixture(scope="module")
def checkpoint(tiny_hf, tmp_path_factory):
    """The session's tiny llava-hf checkpoint (24 CLIP layers, 576 patches) and a non-square image."""
    image = tmp_path_factory.mktemp("images") / "cat.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(image)
    return Path(tiny_hf), image


@pytest.mark.parametrize(
    "method,flags",
    [
        ("fastervlm", ["--visual-token-num", "64"]),
        ("visionzip", ["--visual-token-num", "32"]),
        ("prumerge+", []),
        ("prumerge+", ["--visual-token-num", "64"]),
        ("tome", ["--visual-token-num", "64"]),  # official token order: groups follow the output order
        ("tome", ["--visual-token-num", "64", "--tome-token-order", "raster"]),
        ("none", []),
    ],
)
def test_draws_kept_patches(checkpoint, tmp_path, capsys, method, flags):
    path, image = checkpoint
    out = tmp_path / "kept.png"
    argv = ["--model-path", str(path), "--image", str(image), "--method", method, *flags, "--out", str(out)]
    assert visualize.main(argv) == 0
    drawn = Image.open(out)
    assert drawn.size == (672, 672)  # padded + resized to 336, drawn at scale 2
    assert method in capsys.readouterr().out


def test_clear_errors_without_traceback(checkpoint, tmp_path, capsys):
    path, image = checkpoint
    base = ["--model-path", str(path), "--out", str(tmp_path / "x.png")]
    assert visualize.main([*base, "--image", str(tmp_path / "missing.jpg"), "--method", "fastervlm"]) == 2
    assert "image not found" in capsys.readouterr().err
    assert visualize.main([*base, "--image", str(image), "--method", "vtc-cls", "--start-layer", "23"]) == 2
    err = capsys.readouterr().err
    assert "--start-layer" in err and "Traceback" not in err
    assert visualize.main([*base, "--image", str(image), "--method", "fastervlm", "--start-layer", "3"]) == 2
    assert visualize.main([*base, "--image", str(image), "--method", "nope"]) == 2
    assert "unknown compression method" in capsys.readouterr().err
    missing_model = [
        "--model-path",
        str(tmp_path / "nomodel"),
        "--image",
        str(image),
        "--method",
        "fastervlm",
    ]
    assert visualize.main(missing_model) == 2
    with pytest.raises(SystemExit):
        visualize.main([*base, "--image", str(image), "--method", "vtc-cls", "--ensemble", "median"])
    assert not (tmp_path / "x.png").exists()


def _dark_cells(panel: Image.Image, reference: Image.Image, grid: int = 24) -> set[int]:
    """Patches whose centre is much darker in ``panel`` than in ``reference`` (same size): the dropped ones."""
    a = np.asarray(panel.convert("L"), dtype=np.float32)
    b = np.asarray(reference.convert("L"), dtype=np.float32)
    cell = a.shape[0] // grid
    dark = set()
    for p in range(grid * grid):
        r, c = divmod(p, grid)
        box = (slice(r * cell + 6, (r + 1) * cell - 6), slice(c * cell + 6, (c + 1) * cell - 6))
        if a[box].mean() < 0.6 * b[box].mean():
            dark.add(p)
    return dark


@pytest.mark.parametrize(
    "method,flags,kwargs,layers",
    [
        ("fastv", ["--fastv-k", "2"], dict(fastv_k=2), ["2"]),
        (
            "sparsevlm",
            ["--sparsevlm-layers", "0,2", "--sparsevlm-counts", "300,100"],
            dict(sparsevlm_layers="0,2", sparsevlm_counts="300,100"),
            ["1", "3"],
        ),
    ],
)
def test_in_llm_methods_draw_the_patches_each_pruning_layer_keeps(
    checkpoint, tmp_path, capsys, method, flags, kwargs, layers
):
    """Was: every patch drawn as kept (576/576). Now one panel per pruning layer, dropped patches darkened exactly
    where the evaluation path's trace (``llm_kept_indices``) says."""
    import llava.compression as vtc

    path, image = checkpoint
    out, none_out = tmp_path / "kept.png", tmp_path / "none.png"
    base = ["--model-path", str(path), "--image", str(image)]
    assert visualize.main([*base, "--method", "none", "--out", str(none_out)]) == 0
    capsys.readouterr()
    assert visualize.main([*base, "--method", method, *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "576/576 visual tokens" not in printed and "layer" in printed
    drawn, reference = Image.open(out), Image.open(none_out)
    assert drawn.size == (672 * len(layers), 672 + 16)
    # the trace of the same image and question, recorded by the evaluation path
    tokenizer, model, processor = visualize.load_model_and_processor(str(path))
    vtc.apply(model, method, **kwargs)
    pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    trace = visualize.in_llm_kept(tokenizer, model, pixels, visualize.DEFAULT_QUESTION)
    assert list(trace) == layers
    for i, layer in enumerate(layers):
        panel = drawn.crop((672 * i, 16, 672 * (i + 1), 16 + 672))
        drawn_kept = set(range(576)) - _dark_cells(panel, reference)
        kept = {j if j >= 0 else -1 - j for j in trace[layer]}
        assert drawn_kept == kept
        assert f"layer {layer}: {len(trace[layer])}/576" in printed
