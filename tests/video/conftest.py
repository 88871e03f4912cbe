"""Fixtures for the video tests: tiny videos written with PyAV and a loopback fake judge server."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

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
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    judge = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                status, payload = 404, {"error": {"message": f"no route {self.path}"}}
            else:
                status, payload = judge.respond(body, self.headers.get("Authorization", ""))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield judge, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
