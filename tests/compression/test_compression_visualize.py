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
