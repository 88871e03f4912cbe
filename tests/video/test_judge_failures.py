"""The judge when requests fail: nothing judged, Retry-After, endpoint down, two judges on one output."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.video.local_http import json_server, no_proxies

pytest.importorskip("openai")

from videollava.eval import eval_video_qa  # noqa: E402
from videollava.eval.judge import (  # noqa: E402
    JudgeCache,
    JudgeConfig,
    QARecord,
    RetryPolicy,
    judge_predictions,
    make_openai_complete,
)

KEY = "sk-test-not-a-real-key"
OK = "{'pred': 'yes', 'score': 5}"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def write_preds(path: Path, n: int) -> None:
    rows = [{"id": f"v_{i}", "question": f"q{i}", "answer": "a", "pred": "p"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def cli_args(tmp_path, api_base, *extra):
    return [
        "--pred-path", str(tmp_path / "preds.jsonl"),
        "--output-dir", str(tmp_path / "judge"),
        "--output-json", str(tmp_path / "out" / "results.json"),
        "--api-base", api_base,
        "--judge-model", "judge-1",
        "--max-retries", "2",
        "--backoff-base", "0.001",
        "--backoff-max", "0.01",
        "--no-progress",
        *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Nothing judged


def test_all_items_failed_exits_non_zero_and_says_how_many(tmp_path, fake_judge, capsys):
    judge, api_base = fake_judge
    for i in range(3):
        judge.script[f"q{i}"] = [(200, "I cannot judge this")]
    write_preds(tmp_path / "preds.jsonl", 3)
    assert eval_video_qa.main(cli_args(tmp_path, api_base)) == 1
    err = capsys.readouterr().err
    assert "nothing was judged: 3 of 3 item(s) failed" in err
    out = json.loads((tmp_path / "out" / "results.json").read_text())  # the failures are still written
    assert set(out["failures"]) == {"v_0", "v_1", "v_2"} and out["summary"]["judged"] == 0


# --------------------------------------------------------------------------------------------------
# Retry-After


class ScriptedServer:
    """A loopback /v1/chat/completions server answering from a list of (status, headers, content);
    the last entry repeats."""

    def __init__(self, steps: list[tuple[int, dict[str, str], str]]):
        self.steps = steps
        self.requests = 0
        self.lock = threading.Lock()

    def next_step(self):
        with self.lock:
            step = self.steps[min(self.requests, len(self.steps) - 1)]
            self.requests += 1
        return step


@pytest.fixture
def scripted_server(monkeypatch) -> Iterator:
    no_proxies(monkeypatch)
    with contextlib.ExitStack() as servers:

        def start(steps):
            state = ScriptedServer(steps)

            def respond(path, body, request_headers):
                status, headers, content = state.next_step()
                if status == 200:
                    payload = {
                        "id": "c", "object": "chat.completion", "created": 0, "model": "judge-1",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                    }  # fmt: skip
                else:
                    payload = {"error": {"message": f"scripted HTTP {status}"}}
                return status, payload, headers

            return state, servers.enter_context(json_server(respond))

        yield start


def judge_once(tmp_path, api_base, max_retries=3, retry_after_max=120.0):
    sleeps: list[float] = []
    complete = make_openai_complete(api_base=api_base, api_key=KEY, model="judge-1", timeout=10)
    policy = RetryPolicy(max_retries=max_retries, backoff_base=0.001, backoff_max=0.01, retry_after_max=retry_after_max)
    record = QARecord(id="v_0", question="q0", answer="a", pred="p")
    entries, _ = judge_predictions(
        [record], JudgeCache(tmp_path / "judge", JudgeConfig("judge-1")), complete,
        num_workers=1, policy=policy, progress=False, sleep=sleeps.append,
    )  # fmt: skip
    return entries["v_0"], sleeps


@pytest.mark.parametrize(
    "headers, wait",
    [({"Retry-After": "7"}, 7.0), ({"Retry-After": "2.5"}, 2.5), ({"retry-after-ms": "1500"}, 1.5)],
)
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(tmp_path, scripted_server, status, headers, wait):
    server, api_base = scripted_server([(status, headers, ""), (status, headers, ""), (200, {}, OK)])
    entry, sleeps = judge_once(tmp_path, api_base)
    assert entry["status"] == "ok" and entry["attempts"] == 3 and server.requests == 3
    assert sleeps == [wait, wait]  # the server's wait (longer than the 1-10 ms backoff), per retry


def test_retry_after_beyond_the_cap_ends_the_retries(tmp_path, scripted_server):
    server, api_base = scripted_server([(429, {"Retry-After": "3600"}, ""), (200, {}, OK)])
    entry, sleeps = judge_once(tmp_path, api_base, retry_after_max=60)
    assert entry["status"] == "failed" and server.requests == 1 and sleeps == []
    assert "asked to wait 3600 s" in entry["error"] and "--max-retry-after 60" in entry["error"]


def test_retry_after_forms():
    from videollava.eval.judge import parse_retry_after

    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412490.0) == 0.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# --------------------------------------------------------------------------------------------------
# Endpoint down


def test_endpoint_down_stops_after_a_streak_and_a_rerun_resumes(tmp_path, fake_judge, capsys):
    judge, api_base = fake_judge
    for i in range(40):
        judge.script[f"q{i}"] = [(500, "")]
    write_preds(tmp_path / "preds.jsonl", 40)
    args = cli_args(tmp_path, api_base, "--num-workers", "1")
    assert eval_video_qa.main(args) == 1
    err = capsys.readouterr().err
    # Default streak 20: items 0-5 fail 3 attempts each (18), item 6 trips it on its 2nd request.
    assert judge.total_hits == 20  # not 40 x 3
    assert "looks down: 20 requests in a row failed" in err and "rerun the same command to resume" in err
    assert "HTTP 500" in err

    judge.script.clear()  # the endpoint is back
    assert eval_video_qa.main(args) == 0
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    assert out["summary"]["judged"] == 40 and out["summary"]["failed"] == 0
    assert judge.total_hits == 20 + 40


def test_failures_in_a_row_only_count_when_no_reply_comes_between(tmp_path, fake_judge):
    judge, api_base = fake_judge
    # Every item fails twice, then gets a reply: 2 in a row at most, never stopped at limit 3.
    for i in range(10):
        judge.script[f"q{i}"] = [(500, ""), (503, ""), (200, OK)]
    write_preds(tmp_path / "preds.jsonl", 10)
    args = cli_args(tmp_path, api_base, "--num-workers", "1", "--max-consecutive-failures", "3")
    assert eval_video_qa.main(args) == 0
    assert judge.total_hits == 30


# --------------------------------------------------------------------------------------------------
# Two judges on one output


def test_second_judge_on_the_same_output_exits_naming_the_holder(tmp_path, fake_judge, capsys):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", 2)
    args = cli_args(tmp_path, api_base, "--num-workers", "1")
    second: list[int] = []
    started = threading.Event()
    respond = judge.respond

    def respond_and_start_a_second_judge(body, auth):
        if not started.is_set():  # while the first judge waits for its first reply
            started.set()
            second.append(eval_video_qa.main(args))
        return respond(body, auth)

    judge.respond = respond_and_start_a_second_judge
    assert eval_video_qa.main(args) == 0
    assert second == [1]
    err = capsys.readouterr().err
    assert "judge cache directory" in err and "being written by another process" in err
    assert f"pid {os.getpid()}" in err  # the holder
    assert judge.total_hits == 2  # the second judge sent nothing
    # The lock is released afterwards: a rerun works (and sends nothing).
    judge.respond = respond
    assert eval_video_qa.main(args) == 0 and judge.total_hits == 2
