"""Frame sampling and video reading (decord when importable, PyAV otherwise)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from videollava.data import (
    VideoReadError,
    decord_available,
    read_video_array,
    read_video_frames,
    sample_frame_indices,
    video_io,
)


def frame_index(frame: np.ndarray) -> int:
    """Inverse of the colour code the ``video_dir`` fixture writes (see conftest.frame_colour)."""
    r, g = frame[..., 0].mean(), frame[..., 1].mean()
    return int(round((r - 20) / 30)) * 7 + int(round((g - 20) / 30))


@pytest.mark.parametrize(
    "total, expected",
    [
        (37, [0, 5, 10, 15, 20, 25, 30, 36]),  # 36/7 = 5.14 -> floor
        (100, [0, 14, 28, 42, 56, 70, 84, 99]),
        (300, [0, 42, 85, 128, 170, 213, 256, 299]),
        (8, [0, 1, 2, 3, 4, 5, 6, 7]),
        (5, [0, 0, 1, 1, 2, 2, 3, 4]),  # fewer frames than samples: duplicates kept, as upstream
        (1, [0] * 8),
    ],
)
def test_sample_frame_indices_hand_computed(total, expected):
    assert sample_frame_indices(total) == expected
    assert all(type(i) is int for i in sample_frame_indices(total))


def test_sample_frame_indices_other_n_and_errors():
    assert sample_frame_indices(10, n=3) == [0, 4, 9]
    assert sample_frame_indices(10, n=1) == [0]
    for bad in (0, -3):
        with pytest.raises(ValueError):
            sample_frame_indices(bad)
    with pytest.raises(ValueError):
        sample_frame_indices(10, n=0)
    with pytest.raises(ValueError):
        sample_frame_indices(10.5)


@pytest.fixture
def no_decord(monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    assert not decord_available()


@pytest.mark.parametrize("name", ["clip37.mp4", "clip37.avi"])
def test_pyav_fallback_reads_the_right_frames(video_dir, no_decord, name):
    frames = read_video_frames(video_dir / name)
    assert len(frames) == 8
    assert all(isinstance(f, Image.Image) and f.mode == "RGB" and f.size == (64, 48) for f in frames)
    got = [frame_index(np.asarray(f)) for f in frames]
    assert got == [0, 5, 10, 15, 20, 25, 30, 36]


def test_pyav_short_video_duplicates(video_dir, no_decord):
    array = read_video_array(video_dir / "clip5.mp4", backend="pyav")
    assert array.shape == (8, 48, 64, 3) and array.dtype == np.uint8
    assert [frame_index(f) for f in array] == [0, 0, 1, 1, 2, 2, 3, 4]


def test_explicit_decord_backend_without_decord(video_dir, no_decord):
    with pytest.raises(VideoReadError, match="decord is not installed"):
        read_video_array(video_dir / "clip37.mp4", backend="decord")
    with pytest.raises(ValueError):
        read_video_array(video_dir / "clip37.mp4", backend="opencv")


class _FakeBatch:
    def __init__(self, array):
        self._array = array

    def asnumpy(self):
        return self._array


def _fake_decord(calls, fail=False):
    module = types.ModuleType("decord")
    module.cpu = lambda i: ("cpu", i)

    class VideoReader:
        def __init__(self, path, ctx=None):
            calls.append(("open", path, ctx))
            if fail:
                raise RuntimeError("[decord] cannot find video stream")

        def __len__(self):
            return 37

        def get_batch(self, ids):
            calls.append(("get_batch", list(ids)))
            out = np.zeros((len(ids), 4, 6, 3), np.uint8)
            for k, i in enumerate(ids):
                out[k] = i
            return _FakeBatch(out)

    module.VideoReader = VideoReader
    return module


def test_decord_is_used_when_importable(video_dir, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "decord", _fake_decord(calls))
    array = read_video_array(video_dir / "clip37.mp4")
    assert calls[0] == ("open", str(video_dir / "clip37.mp4"), ("cpu", 0))
    assert calls[1] == ("get_batch", [0, 5, 10, 15, 20, 25, 30, 36])
    assert array[:, 0, 0, 0].tolist() == [0, 5, 10, 15, 20, 25, 30, 36]


def test_auto_falls_back_to_pyav_when_decord_fails(video_dir, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "decord", _fake_decord(calls, fail=True))
    array = read_video_array(video_dir / "clip37.mp4")
    assert [frame_index(f) for f in array] == [0, 5, 10, 15, 20, 25, 30, 36]
    with pytest.raises(VideoReadError, match="decord cannot open"):
        read_video_array(video_dir / "clip37.mp4", backend="decord")
    with pytest.raises(VideoReadError, match="PyAV fallback"):
        read_video_array(video_dir / "garbage.mp4")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing.mp4", "file not found"),
        ("empty.mp4", r"file is empty \(0 bytes\)"),
        ("truncated.mp4", "cannot open the container"),
        ("garbage.mp4", "cannot open the container"),
        (".", "not a regular file"),
    ],
)
def test_bad_videos_raise_one_clear_error(video_dir, no_decord, name, reason):
    path = video_dir / name
    with pytest.raises(VideoReadError, match=reason) as info:
        read_video_frames(path)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    assert isinstance(err, RuntimeError)


def test_container_without_video_stream(tmp_path, no_decord):
    import av

    path = tmp_path / "audio_only.wav"
    container = av.open(str(path), "w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video_array(path)


def test_short_decode_resamples_over_decoded_frames(video_dir, no_decord, monkeypatch, caplog):
    # The container indexes more packets than decode (e.g. not-coded frames): ids are re-drawn.
    monkeypatch.setattr(video_io, "_count_packets_pyav", lambda path: 50)
    array = read_video_array(video_dir / "clip37.mp4")
    assert [frame_index(f) for f in array] == [0, 5, 10, 15, 20, 25, 30, 36]
    assert "only 37 decode" in caplog.text
