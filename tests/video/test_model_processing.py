"""Video preprocessing without torchvision: the LanguageBind transform, the port's CLIP transform, frame order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from videollava.model.processing import (
    VideoProcessor,
    build_video_prompt,
    centre_crop_offsets,
    languagebind_transform,
    short_side_size,
)

MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    "w, h, resized, crop",
    [  # videollava.md section 8, worked sizes
        (320, 240, (298, 224), (0, 37)),
        (640, 480, (298, 224), (0, 37)),
        (1280, 720, (398, 224), (0, 87)),
        (1920, 1080, (398, 224), (0, 87)),
        (176, 144, (273, 224), (0, 24)),
        (340, 256, (297, 224), (0, 36)),
        (720, 1280, (224, 398), (87, 0)),
    ],
)
def test_short_side_scale_and_centre_crop_geometry(w, h, resized, crop):
    new_h, new_w = short_side_size(h, w, 224)
    assert (new_w, new_h) == resized
    assert centre_crop_offsets(new_h, new_w, 224) == crop


def test_languagebind_transform_values():
    frames = np.zeros((8, 144, 176, 3), np.uint8)
    frames[:] = (10, 128, 250)
    out = languagebind_transform(frames)
    assert out.shape == (8, 3, 224, 224) and out.dtype == torch.float32
    expected = (torch.tensor([10, 128, 250]).view(1, 3, 1, 1) / 255.0 - MEAN) / STD
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)
    # at 224 x 224 the resize is the identity: only the scaling and normalisation remain
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    ref = (torch.from_numpy(square).permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD
    assert torch.equal(languagebind_transform(square), ref)
    # and the port's processor agrees there (no resampling at all)
    assert torch.allclose(VideoProcessor("clip").frames_to_pixels(square), ref, atol=1e-5)


def test_clip_transform_differs_on_downscaled_noise():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
    a = VideoProcessor("languagebind").frames_to_pixels(frames)
    b = VideoProcessor("clip").frames_to_pixels(frames)
    assert a.shape == b.shape == (8, 3, 224, 224)
    assert b.std() < 0.8 * a.std()  # antialiasing smooths what the original's bilinear resize aliases


def frame_colour(i: int) -> tuple[int, int, int]:
    """The flat colour of frame ``i`` of conftest's test videos."""
    return 20 + 30 * (i // 7), 20 + 30 * (i % 7), 128


def test_frames_come_in_temporal_order(video_dir):
    pixels = VideoProcessor("languagebind", backend="pyav")(video_dir / "clip37.mp4")
    assert pixels.shape == (8, 3, 224, 224)
    for t, frame_id in enumerate([0, 5, 10, 15, 20, 25, 30, 36]):  # linspace(0, 36, 8), decord's convention
        rgb = (pixels[t].mean(dim=(1, 2)) * STD.view(3) + MEAN.view(3)) * 255
        assert torch.allclose(rgb, torch.tensor(frame_colour(frame_id), dtype=torch.float32), atol=6)


def test_video_prompt():
    prompt = build_video_prompt("is the man running?")
    assert prompt == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: " + "<image>" * 8
        + "\nis the man running? ASSISTANT:"
    )
    with pytest.raises(ValueError, match="unknown video transform"):
        VideoProcessor("bicubic")
