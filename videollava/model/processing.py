"""Video preprocessing (frames -> pixel tensors) and the video QA prompt, without torchvision.

Frames come from :func:`videollava.data.video_io.read_video_array` (``numpy.linspace(0, n-1, 8, dtype=int)``,
decord when installed, else PyAV). Two pixel transforms are offered; neither applies a random flip:

``languagebind`` (the original Video-LLaVA transform, videollava.md section 8, re-implemented with torch ops)
    ``x / 255`` -> per-channel ``(x - mean) / std`` (float32, *before* resizing) -> short side to 224 with bilinear
    ``interpolate(align_corners=False, antialias=False)``, long side ``floor(long / short * 224)`` -> centre crop
    224 at ``int(round((size - 224) / 2))`` (Python's round-half-to-even). Bit-for-bit the same arithmetic as
    pytorchvideo's ``ShortSideScale`` + torchvision's ``NormalizeVideo`` / ``CenterCropVideo`` on CPU float32; the
    only step left out is upstream's ``RandomHorizontalFlipVideo(p=0.5)`` (this project applies no flip).

``clip`` (what the transformers port's processor does, run per frame with ``CLIPImageProcessorPil``)
    PIL bicubic resize of the uint8 frame with antialiasing (shortest edge 224, long side
    ``int(224 * long / short)``), centre crop at ``(size - 224) // 2``, then rescale and normalise. Pixel-level
    differences from ``languagebind``: bicubic + antialias instead of bilinear without antialias (large on
    downscaled sources: aliasing is part of the original), resizing before normalising and on uint8 (rounded to
    integers) instead of on float32, and a crop offset one pixel smaller when ``size - 224 = 3 (mod 4)``.

Both return ``[T, 3, 224, 224]`` float32 (frame-major, what ``pixel_values_videos[b]`` holds in the port).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.conversation import get_conversation
from videollava.data.video_io import DEFAULT_NUM_FRAMES, read_video_array

VIDEO_TRANSFORMS = ("languagebind", "clip")
VIDEO_CONV_MODE = "llava_v1"  # hard-coded by Video-LLaVA's QA script (videollava.md section 9)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """pytorchvideo ``ShortSideScale``'s output ``(new_h, new_w)``: short side ``size``, long side floored."""
    if width < height:
        return int(math.floor(float(height) / width * size)), size
    return size, int(math.floor(float(width) / height * size))


def centre_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``CenterCropVideo``'s ``(top, left)``: ``int(round((dim - size) / 2))``, half to even."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def languagebind_transform(
    frames: np.ndarray,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 RGB -> ``[T, 3, size, size]`` float32, as LanguageBind's video processor (no flip)."""
    _check_frames(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - m) / s
    h, w = x.shape[-2:]
    new_h, new_w = short_side_size(h, w, size)
    # bilinear interpolation treats every (frame, channel) plane independently, as the [C, T, H, W] original does
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    top, left = centre_crop_offsets(new_h, new_w, size)
    return x[:, :, top : top + size, left : left + size].contiguous()


def build_clip_frame_processor(size: int = 224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    """The port's per-frame processor: ``CLIPImageProcessorPil`` at ``size`` (bicubic, centre crop)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        image_mean=list(mean),
        image_std=list(std),
    )


def clip_transform(frames: np.ndarray, processor) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 RGB -> ``[T, 3, S, S]`` float32 with a CLIP image processor, frame by frame."""
    from PIL import Image

    _check_frames(frames)
    images = [Image.fromarray(f) for f in frames]
    return processor(images=images, return_tensors="pt")["pixel_values"].float()


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected [T, H, W, 3] uint8 RGB frames, got {frames.shape} {frames.dtype}")


class VideoProcessor:
    """Reads a video file and returns ``[T, 3, size, size]`` float32 pixels.

    Args:
        transform: ``"languagebind"`` (the original transform) or ``"clip"`` (the port's); see the module docstring.
        size: crop size (the tower's ``image_size``, 224).
        num_frames: frames sampled per video (8).
        backend: frame reader backend for :func:`read_video_array` (``"auto"``, ``"decord"``, ``"pyav"``).
    """

    def __init__(
        self,
        transform: str = "languagebind",
        size: int = 224,
        num_frames: int = DEFAULT_NUM_FRAMES,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        backend: str = "auto",
    ):
        if transform not in VIDEO_TRANSFORMS:
            raise ValueError(f"unknown video transform {transform!r}; choose one of {VIDEO_TRANSFORMS}")
        self.transform, self.size, self.num_frames = transform, size, num_frames
        self.mean, self.std, self.backend = tuple(mean), tuple(std), backend
        self._clip = build_clip_frame_processor(size, mean, std) if transform == "clip" else None

    def frames_to_pixels(self, frames: np.ndarray) -> torch.Tensor:
        if self.transform == "clip":
            return clip_transform(frames, self._clip)
        return languagebind_transform(frames, self.size, self.mean, self.std)

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        """Raises :class:`videollava.data.video_io.VideoReadError` for an unreadable file."""
        return self.frames_to_pixels(read_video_array(path, self.num_frames, self.backend))

    def to_dict(self) -> dict:
        backend = self.backend
        if backend == "auto":  # what read_video_array tries first
            from videollava.data.video_io import decord_available

            backend = "decord" if decord_available() else "pyav"
        return {"transform": self.transform, "size": self.size, "num_frames": self.num_frames,
                "backend": backend, "random_flip": False}


def video_message(question: str, num_frames: int = DEFAULT_NUM_FRAMES) -> str:
    """The user turn of Video-LLaVA's QA script: ``<image>`` x T (no separator), a newline, the raw question."""
    return DEFAULT_IMAGE_TOKEN * num_frames + "\n" + question


def build_video_prompt(question: str, num_frames: int = DEFAULT_NUM_FRAMES, conv_mode: str = VIDEO_CONV_MODE) -> str:
    """``<llava_v1 system> USER: <image>x8\\n<question> ASSISTANT:`` (videollava.md section 9)."""
    conv = get_conversation(conv_mode)
    conv.append_message(conv.roles[0], video_message(question, num_frames))
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
