"""Fixtures for the video tests: tiny videos written with PyAV and a loopback fake judge server."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.video.local_http import json_server, no_proxies

# Frame i of a test video is one flat colour that encodes i, so decoded frames can be identified
# despite lossy coding: R = 20 + 30 * (i // 7), G = 20 + 30 * (i % 7), B = 128 (i < 49).


def frame_colour(i: int) -> tuple[int, int, int]:
    return 20 + 30 * (i // 7), 20 + 30 * (i % 7), 128


def write_video(path: Path, num_frames: int, codec: str = "libx264", size=(64, 48), fps: int = 10) -> Path:
    import av

    w, h = size
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "10"}
    else:
        stream.options = {"qscale": "2"}
    for i in range(num_frames):
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = frame_colour(i)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    pytest.importorskip("av")
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "clip37.mp4", 37)
    write_video(d / "clip37.avi", 37, codec="mpeg4")
    write_video(d / "clip5.mp4", 5)
    data = (d / "clip37.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "empty.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(bytes(range(256)) * 16)
    return d


# --------------------------------------------------------------------------------------------------
# Fake OpenAI-compatible judge


OK_YES5 = (200, "{'pred': 'yes', 'score': 5}")


class FakeJudge:
    """Replies are scripted per question (the ``Question:`` line of the user message).

    ``script[question]`` is a list of ``(http_status, content)``; the n-th request for that question
    gets the n-th entry, and the last entry repeats. Unscripted questions get ``OK_YES5``.
    """

    def __init__(self):
        self.script: dict[str, list[tuple[int, str]]] = {}
        self.hits: Counter[str] = Counter()
        self.models: list[str] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    def respond(self, body: dict, auth: str) -> tuple[int, dict]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        match = re.search(r"^Question: (.*)$", user, re.MULTILINE)
        question = match.group(1) if match else ""
        with self.lock:
            n = self.hits[question]
            self.hits[question] += 1
            self.models.append(body.get("model"))
            self.auth.append(auth)
        steps = self.script.get(question, [OK_YES5])
        status, content = steps[min(n, len(steps) - 1)]
        if status != 200:
            return status, {"error": {"message": f"scripted HTTP {status}", "type": "server_error"}}
        return 200, {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


@pytest.fixture
def fake_judge(monkeypatch) -> Iterator[tuple[FakeJudge, str]]:
    """(judge, api_base) for a server on 127.0.0.1 that speaks /v1/chat/completions."""
    no_proxies(monkeypatch)
    judge = FakeJudge()

    def respond(path, body, headers):
        if path.rstrip("/") != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}, {}
        status, payload = judge.respond(body, headers.get("Authorization", ""))
        return status, payload, {}

    with json_server(respond) as api_base:
        yield judge, api_base
