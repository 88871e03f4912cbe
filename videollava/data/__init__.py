"""Video input for Video-LLaVA evaluation: reading files and uniform frame sampling."""

from videollava.data.video_io import (
    DEFAULT_NUM_FRAMES,
    VideoReadError,
    decord_available,
    read_video_array,
    read_video_frames,
    sample_frame_indices,
)

__all__ = [
    "DEFAULT_NUM_FRAMES",
    "VideoReadError",
    "decord_available",
    "read_video_array",
    "read_video_frames",
    "sample_frame_indices",
]
