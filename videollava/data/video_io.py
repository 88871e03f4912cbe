"""Video reading and uniform frame sampling for Video-LLaVA evaluation.

Convention (Video-LLaVA's LanguageBind video processor, ``decord`` backend, 8 frames):

* ``n_total`` is the number of frames in the container's index (decord's ``len(VideoReader)``).
* The sampled frame ids are ``numpy.linspace(0, n_total - 1, n, dtype=int)``: truncation towards
  zero (floor, since the values are non-negative), first and last frame included, duplicates kept
  when ``n_total < n``. Examples: 37 -> [0, 5, 10, 15, 20, 25, 30, 36];
  100 -> [0, 14, 28, 42, 56, 70, 84, 99].

Readers return RGB ``uint8`` frames in temporal order. Nothing else is done here: no resizing, no
normalisation and no random horizontal flip (upstream leaves a ``RandomHorizontalFlipVideo`` in its
inference transform; this project applies no flip at inference).

Backends:

* ``decord`` (used first when importable, as upstream): ``VideoReader(path, ctx=cpu(0))``,
  ``get_batch(ids)``.
* ``pyav`` (fallback, always available with the ``video`` extra): the frame count is the number of
  non-empty video packets in the stream (what decord indexes); frames are decoded sequentially in
  presentation order and the ones at the sampled ids are kept. If the decoder yields fewer frames
  than the container indexes (e.g. MPEG-4 Part 2 streams with not-coded frames), the ids are
  re-drawn over the number of frames that actually decode, with a logged warning.

Every failure (missing, empty, not a regular file, no video stream, undecodable, zero frames)
raises :class:`VideoReadError`, which names the file and the problem, so callers can record the item
and skip it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_NUM_FRAMES = 8
BACKENDS = ("auto", "decord", "pyav")


class VideoReadError(RuntimeError):
    """A video could not be read. ``path`` and ``reason`` are kept as attributes."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video '{self.path}': {reason}")


def sample_frame_indices(num_frames_total: int, n: int = DEFAULT_NUM_FRAMES) -> list[int]:
    """Uniform frame ids ``numpy.linspace(0, num_frames_total - 1, n, dtype=int)`` as a list of ints."""
    if isinstance(num_frames_total, bool) or int(num_frames_total) != num_frames_total:
        raise ValueError(f"num_frames_total must be an integer, got {num_frames_total!r}")
    if num_frames_total < 1:
        raise ValueError(f"num_frames_total must be >= 1, got {num_frames_total}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [int(i) for i in np.linspace(0, int(num_frames_total) - 1, n, dtype=int)]


def decord_available() -> bool:
    """True when ``import decord`` succeeds (decord is optional)."""
    try:
        importlib.import_module("decord")
    except ImportError:
        return False
    return True


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise VideoReadError(path, f"cannot stat file ({e})") from e
    if size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoReadError(path, "file is not readable (permission denied)")


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_decord(path: Path, n: int) -> np.ndarray:
    decord = importlib.import_module("decord")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        total = len(reader)
    except Exception as e:  # decord raises its own DECORDError (a RuntimeError) and others
        raise VideoReadError(path, f"decord cannot open the video ({_describe(e)})") from e
    if total < 1:
        raise VideoReadError(path, "the video has no frames")
    ids = sample_frame_indices(total, n)
    try:
        batch = reader.get_batch(ids)
        array = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    except Exception as e:
        raise VideoReadError(path, f"decord cannot decode frames {ids} of {total} ({_describe(e)})") from e
    return _check_batch(path, array, len(ids))


def _open_pyav(path: Path):
    import av

    try:
        container = av.open(str(path))
    except Exception as e:
        raise VideoReadError(path, f"cannot open the container ({_describe(e)})") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "the file has no video stream")
    return container


def _count_packets_pyav(path: Path) -> int:
    container = _open_pyav(path)
    try:
        stream = container.streams.video[0]
        declared = stream.frames or 0
        # Every packet of the stream counts (as decord indexes them), except the empty flush packet
        # PyAV yields at the end of the stream (no data and no timestamp).
        count = sum(1 for p in container.demux(stream) if p.size or p.dts is not None)
    except Exception as e:
        raise VideoReadError(path, f"cannot demux the video stream ({_describe(e)})") from e
    finally:
        container.close()
    if 0 < count < declared:
        logger.warning(
            "%s: the header declares %d frames but only %d packets can be read (truncated file?)",
            path,
            declared,
            count,
        )
    return count


def _decode_pyav(path: Path, wanted: Sequence[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode the whole stream; return the frames at ``wanted`` ids and the number of decoded frames."""
    wanted_set = set(wanted)
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    container = _open_pyav(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if decoded in wanted_set:
                frames[decoded] = frame.to_ndarray(format="rgb24")
            decoded += 1
            if decoded > last:
                break
    except Exception as e:
        raise VideoReadError(path, f"decoding failed after {decoded} frame(s) ({_describe(e)})") from e
    finally:
        container.close()
    return frames, decoded


def _read_pyav(path: Path, n: int) -> np.ndarray:
    total = _count_packets_pyav(path)
    if total < 1:
        raise VideoReadError(path, "the video stream has no frames")
    ids = sample_frame_indices(total, n)
    frames, decoded = _decode_pyav(path, ids)
    if len(frames) < len(set(ids)):
        if decoded < 1:
            raise VideoReadError(path, f"no frame could be decoded (the container indexes {total})")
        logger.warning(
            "%s: the container indexes %d frames but only %d decode; sampling over the decoded frames",
            path,
            total,
            decoded,
        )
        ids = sample_frame_indices(decoded, n)
        frames, decoded_again = _decode_pyav(path, ids)
        if len(frames) < len(set(ids)):
            raise VideoReadError(
                path, f"decoding is not repeatable ({decoded} then {decoded_again} frames decoded)"
            )
    return _check_batch(path, np.stack([frames[i] for i in ids]), len(ids))


def _check_batch(path: Path, array: np.ndarray, n: int) -> np.ndarray:
    if array.ndim != 4 or array.shape[0] != n or array.shape[-1] != 3:
        raise VideoReadError(path, f"unexpected frame batch shape {tuple(array.shape)} (want ({n}, H, W, 3))")
    if array.dtype != np.uint8:
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def read_video_array(
    path: str | os.PathLike, n: int = DEFAULT_NUM_FRAMES, backend: str = "auto"
) -> np.ndarray:
    """Read ``n`` uniformly sampled frames as a ``(n, H, W, 3)`` RGB ``uint8`` array.

    ``backend``: ``"auto"`` (decord when importable, else PyAV; if decord fails on a file, PyAV is
    tried before giving up), ``"decord"`` or ``"pyav"``. Raises :class:`VideoReadError`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    path = Path(path)
    _check_file(path)
    if backend == "decord":
        if not decord_available():
            raise VideoReadError(path, "backend 'decord' requested but decord is not installed")
        return _read_decord(path, n)
    if backend == "pyav":
        return _read_pyav(path, n)
    if decord_available():
        try:
            return _read_decord(path, n)
        except VideoReadError as decord_error:
            logger.warning("%s; trying PyAV", decord_error)
            try:
                return _read_pyav(path, n)
            except VideoReadError as pyav_error:
                raise VideoReadError(
                    path, f"{decord_error.reason}; PyAV fallback: {pyav_error.reason}"
                ) from pyav_error
    return _read_pyav(path, n)


def read_video_frames(
    path: str | os.PathLike, n: int = DEFAULT_NUM_FRAMES, backend: str = "auto"
) -> list[Image.Image]:
    """Read ``n`` uniformly sampled frames as RGB PIL images (see :func:`read_video_array`)."""
    return [Image.fromarray(frame) for frame in read_video_array(path, n, backend)]
