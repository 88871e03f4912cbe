"""The GPT judge against a loopback OpenAI-compatible server (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")

from videollava.eval import eval_video_qa  # noqa: E402
from videollava.eval.eval_video_qa import PredictionFileError, load_predictions  # noqa: E402
from videollava.eval.judge import (  # noqa: E402
    PROMPT_VERSION,
    MalformedReplyError,
    build_messages,
    cache_filename,
    parse_judgement,
)
from videollava.eval.judge_prompt import builtin_prompt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-not-a-real-key"


def write_preds(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(i, question=None, answer="a", pred="p", **extra):
    return {"id": f"v_{i}", "question": question or f"q{i}", "answer": answer, "pred": pred, **extra}


def run_cli(tmp_path, api_base, *extra, pred="preds.jsonl", out_dir="judge", model="judge-1"):
    args = [
        "--pred-path", str(tmp_path / pred),
        "--output-dir", str(tmp_path / out_dir),
        "--output-json", str(tmp_path / "out" / "results.json"),
        "--api-base", api_base,
        "--judge-model", model,
        "--num-workers", "4",
        "--max-retries", "2",
        "--backoff-base", "0.001",
        "--backoff-max", "0.01",
        "--timeout", "10",
        "--no-progress",
        *extra,
    ]  # fmt: skip
    return eval_video_qa.main(args)


def read_output(tmp_path):
    return json.loads((tmp_path / "out" / "results.json").read_text())


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


# --------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("{'pred': 'yes', 'score': 4}", {"pred": "yes", "score": 4}),
        ('  {"pred": "No", "score": 0}\n', {"pred": "no", "score": 0}),
        ("```python\n{'pred': 'yes', 'score': 5}\n```", {"pred": "yes", "score": 5}),
        ("{'pred': 'yes', 'score': 3.0}", {"pred": "yes", "score": 3}),
    ],
)
def test_parse_accepts(reply, expected):
    assert parse_judgement(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "yes",
        "Sure! {'pred': 'yes', 'score': 4}",
        "{'pred': 'yes', 'score': 4.8}",  # upstream's own example: not an integer
        "{'pred': 'yes', 'score': '4'}",
        "{'pred': 'yes', 'score': 6}",
        "{'pred': 'yes', 'score': -1}",
        "{'pred': 'yes', 'score': True}",
        "{'pred': 'maybe', 'score': 2}",
        "{'pred': 'yes'}",
        "{'pred': 'yes', 'score': 4, 'reason': 'x'}",
        "['yes', 4]",
        "{'pred': 'yes', 'score': 4",
    ],
)
def test_parse_rejects(reply):
    with pytest.raises(MalformedReplyError):
        parse_judgement(reply)


def test_prompt_contains_the_item():
    messages = build_messages("what is it?", "a cat", "a kitten")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "Question: what is it?\nCorrect Answer: a cat\nPredicted Answer: a kitten\n" in user
    assert "'pred'" in user and "'score'" in user and "INTEGER" in user
    assert "synonyms" in messages[0]["content"]


def test_cache_filenames_are_safe():
    assert cache_filename("v_abc_0") == "v_abc_0.json"
    assert cache_filename(12) == "12.json"
    odd = cache_filename("../x/y z")
    assert "/" not in odd and odd.endswith(".json") and not odd.startswith(".")
    assert cache_filename("a/b") != cache_filename("a_b")


# --------------------------------------------------------------------------------------------------
# Prediction file


def test_prediction_file_aliases_and_skips(tmp_path):
    path = write_preds(
        tmp_path / "p.jsonl",
        [
            {
                "question_id": "a",
                "id": "a",
                "question": "q",
                "answer": "x",
                "pred": "y",
                "metadata": {"k": 1},
            },
            {"question_id": 3, "Q": "q3", "A": 7, "text": "seven"},
            {
                "question_id": "b",
                "question": "q",
                "answer": "x",
                "error": "cannot read video 'b.mp4': file not found",
            },
        ],
    )
    records, skipped = load_predictions(path)
    assert [(r.id, r.question, r.answer, r.pred) for r in records] == [
        ("a", "q", "x", "y"),
        (3, "q3", "7", "seven"),
    ]
    assert skipped == {"b": "cannot read video 'b.mp4': file not found"}


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "a", "question": "q", "answer": "x"}'], "missing field 'pred'"),
        (['{"id": "a", "question_id": "b", "question": "q", "answer": "x", "pred": "p"}'], "disagree"),
        (['{"id": "a", "question": "q", "answer": "x", "pred": 5}'], "'pred' must be a string"),
        (['{"id": "a", "question": "q", "answer": "x", "pred": "p"}'] * 2, "already appears on line 1"),
        (["not json"], "not valid JSON"),
        (["[1, 2]"], "expected a JSON object"),
    ],
)
def test_prediction_file_errors(tmp_path, lines, message):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictionFileError, match=message):
        load_predictions(path)


# --------------------------------------------------------------------------------------------------
# End to end against the fake server


def test_success_and_output_format(tmp_path, fake_judge):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", [row(i) for i in range(3)])
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == 3
    assert set(judge.models) == {"judge-1"}
    assert set(judge.auth) == {f"Bearer {KEY}"}
    out = read_output(tmp_path)
    s = out["summary"]
    assert (s["num_items"], s["yes"], s["no"], s["failed"], s["missing"]) == (3, 3, 0, 0, 0)
    assert s["accuracy"] == 1.0 and s["average_score"] == 5.0 and s["judge_model"] == "judge-1"
    builtin_sha = builtin_prompt().sha256
    assert out["judge"] == {
        "judge_model": "judge-1",
        "judge_mode": "upstream",
        "prompt_sha256": builtin_sha,
        "prompt_source": f"builtin:{PROMPT_VERSION}",
        "temperature": None,
        "api_base": api_base,
    }
    assert s["judge_mode"] == "upstream" and s["prompt_sha256"] == builtin_sha
    assert out["results"]["v_0"] == {
        "judgement": "yes",
        "score": 5,
        "reply": "{'pred': 'yes', 'score': 5}",
        "question": "q0",
        "answer": "a",
        "prediction": "p",
        "judge_mode": "upstream",
        "prompt_sha256": builtin_sha,
    }
    entry = json.loads((tmp_path / "judge" / "v_0.json").read_text())
    assert entry["status"] == "ok" and entry["judgement"] == {"pred": "yes", "score": 5}
    assert entry["judge_model"] == "judge-1" and entry["judge_mode"] == "upstream"
    assert entry["prompt_sha256"] == builtin_sha
    assert entry["qa"] == {"question": "q0", "answer": "a", "pred": "p"} and entry["attempts"] == 1
    assert KEY not in (tmp_path / "out" / "results.json").read_text()


def test_http_500_then_success_and_malformed_then_success(tmp_path, fake_judge):
    judge, api_base = fake_judge
    judge.script["q0"] = [(500, ""), (200, "{'pred': 'no', 'score': 1}")]
    judge.script["q1"] = [(200, "I think yes, 4"), (200, "{'pred': 'yes', 'score': 4}")]
    write_preds(tmp_path / "preds.jsonl", [row(0), row(1)])
    assert run_cli(tmp_path, api_base) == 0
    assert judge.hits == {"q0": 2, "q1": 2}
    out = read_output(tmp_path)
    assert out["summary"]["yes"] == 1 and out["summary"]["no"] == 1 and out["summary"]["failed"] == 0
    assert json.loads((tmp_path / "judge" / "v_0.json").read_text())["attempts"] == 2


def test_always_malformed_is_a_recorded_failure_and_summary_arithmetic(tmp_path, fake_judge):
    judge, api_base = fake_judge
    judge.script.update(
        {
            "q0": [(200, "{'pred': 'yes', 'score': 5}")],
            "q1": [(200, "{'pred': 'yes', 'score': 4}")],
            "q2": [(200, "{'pred': 'yes', 'score': 3}")],
            "q3": [(200, "{'pred': 'no', 'score': 1}")],
            "q4": [(200, "definitely yes")],  # never valid
        }
    )
    rows = [row(i) for i in range(5)] + [
        {"id": "v_9", "question": "q9", "answer": "a", "error": "unreadable video"}
    ]
    write_preds(tmp_path / "preds.jsonl", rows)
    assert run_cli(tmp_path, api_base) == 0
    assert judge.hits["q4"] == 3  # 1 + --max-retries 2
    assert "q9" not in judge.hits
    s = read_output(tmp_path)["summary"]
    # by hand: yes = 3, no = 1, failed = 1; accuracy = 3 / (3 + 1); score = (5 + 4 + 3 + 1) / 4
    assert (s["yes"], s["no"], s["failed"], s["skipped_inputs"], s["judged"]) == (3, 1, 1, 1, 4)
    assert s["accuracy"] == 0.75 and s["accuracy_pct"] == 75.0
    assert s["average_score"] == 3.25 and s["average_score_2dp"] == 3.25
    out = read_output(tmp_path)
    assert set(out["results"]) == {"v_0", "v_1", "v_2", "v_3"}
    assert out["failures"]["v_4"]["attempts"] == 3 and "malformed" in out["failures"]["v_4"]["error"]
    assert out["failures"]["v_4"]["reply"] == "definitely yes"
    assert out["skipped"] == {"v_9": "unreadable video"}

    # Rerun with --keep-failed: nothing is sent at all.
    before = judge.total_hits
    assert run_cli(tmp_path, api_base, "--keep-failed") == 0
    assert judge.total_hits == before
    assert read_output(tmp_path)["summary"] == s | {"judge_model": "judge-1"}

    # Plain rerun: only the failed item is sent again; the judged ones never are.
    judge.script["q4"] = [(200, "{'pred': 'no', 'score': 2}")]
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == before + 1 and judge.hits["q4"] == 4
    s2 = read_output(tmp_path)["summary"]
    assert (s2["yes"], s2["no"], s2["failed"]) == (3, 2, 0)
    assert s2["accuracy"] == 0.6 and s2["average_score"] == 3.0
    assert read_output(tmp_path)["run"]["cached_ok"] == 4


def test_rerun_sends_nothing_for_cached_items(tmp_path, fake_judge):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", [row(i) for i in range(6)])
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == 6
    first = read_output(tmp_path)["summary"]
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == 6
    assert read_output(tmp_path)["summary"] == first
    # A new item in the prediction file: only that one is sent.
    write_preds(tmp_path / "preds.jsonl", [row(i) for i in range(7)])
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == 7 and judge.hits["q6"] == 1


def test_stale_and_foreign_cache_entries(tmp_path, fake_judge):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", [row(i) for i in range(3)])
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == 3

    # Another judge model on the same directory: refused, nothing sent.
    assert run_cli(tmp_path, api_base, model="judge-2") == 1
    assert judge.total_hits == 3
    # Changed prediction text for one id: refused too.
    write_preds(tmp_path / "preds.jsonl", [row(0, pred="changed"), row(1), row(2)])
    assert run_cli(tmp_path, api_base) == 1
    assert judge.total_hits == 3
    # Allowed explicitly: only the stale item is re-judged.
    assert run_cli(tmp_path, api_base, "--overwrite-stale") == 0
    assert judge.total_hits == 4 and judge.hits["q0"] == 2
    assert json.loads((tmp_path / "judge" / "v_0.json").read_text())["qa"]["pred"] == "changed"

    # A foreign entry (id not in the prediction file) is ignored and counted.
    (tmp_path / "judge" / "v_99.json").write_text(
        (tmp_path / "judge" / "v_1.json").read_text().replace('"v_1"', '"v_99"')
    )
    (tmp_path / "judge" / "junk.json").write_text("{half")
    assert run_cli(tmp_path, api_base) == 0
    out = read_output(tmp_path)
    assert judge.total_hits == 4
    assert out["run"]["foreign"] == 1 and out["run"]["unreadable"] == 1
    assert out["summary"]["num_items"] == 3 and "v_99" not in out["results"]


def test_missing_api_key_is_a_clear_error(tmp_path, fake_judge, monkeypatch, capsys):
    judge, api_base = fake_judge
    monkeypatch.delenv("OPENAI_API_KEY")
    write_preds(tmp_path / "preds.jsonl", [row(0)])
    assert run_cli(tmp_path, api_base) == 2
    err = capsys.readouterr().err
    assert "no API key" in err and "OPENAI_API_KEY" in err
    monkeypatch.setenv("MY_KEY", "  ")
    assert run_cli(tmp_path, api_base, "--api-key-env", "MY_KEY") == 2
    assert "MY_KEY" in capsys.readouterr().err
    assert judge.total_hits == 0


def test_auth_error_aborts_and_bad_request_is_not_retried(tmp_path, fake_judge, capsys):
    judge, api_base = fake_judge
    judge.script["q0"] = [(400, "")]
    write_preds(tmp_path / "preds.jsonl", [row(0), row(1)])
    assert run_cli(tmp_path, api_base) == 0
    assert judge.hits["q0"] == 1
    assert read_output(tmp_path)["summary"]["failed"] == 1

    judge.script["q5"] = [(401, "")]
    write_preds(tmp_path / "preds.jsonl", [row(5)])
    assert run_cli(tmp_path, api_base, out_dir="judge5") == 1
    assert "refused the API key" in capsys.readouterr().err
    assert judge.hits["q5"] == 1
    assert not list((tmp_path / "judge5").glob("*.json"))  # nothing recorded: a rerun tries again

    # With many items and one worker, the queued ones are cancelled, not failed.
    for i in range(10, 30):
        judge.script[f"q{i}"] = [(401, "")]
    write_preds(tmp_path / "preds.jsonl", [row(i) for i in range(10, 30)])
    assert run_cli(tmp_path, api_base, "--num-workers", "1", out_dir="judge6") == 1
    assert "refused the API key" in capsys.readouterr().err
    # The worker may already hold the next item when the first 401 comes back: at most 2 requests.
    assert judge.total_hits - judge.hits["q0"] - judge.hits["q1"] - judge.hits["q5"] <= 2
    assert not list((tmp_path / "judge6").glob("*.json"))


def test_runner_script_layout(tmp_path, fake_judge):
    judge, api_base = fake_judge
    answers = tmp_path / "qa" / "MSVD_Zero_Shot_QA" / "answers" / "Video-LLaVA-7B" / "fastervlm" / "64"
    answers.mkdir(parents=True)
    write_preds(answers / "merge.jsonl", [row(0), row(1)])
    env = {
        **os.environ,
        "EVAL_ROOT": str(tmp_path / "qa"),
        "API_BASE": api_base,
        "JUDGE_MODEL": "org/judge:1",
        "OPENAI_API_KEY": KEY,
        "NUM_WORKERS": "2",
        "PYTHON": sys.executable,
        "EXTRA_ARGS": "--no-progress --backoff-base 0.001",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/video/eval/eval_qa_msvd.sh"), "64"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = answers / "judge" / "org_judge_1" / "results.json"
    out = json.loads(result.read_text())
    assert out["summary"]["judge_model"] == "org/judge:1" and out["summary"]["yes"] == 2
    assert out["summary"]["judge_mode"] == "upstream"  # the scripts' default: as the published numbers
    assert (answers / "judge" / "org_judge_1" / "results" / "v_0.json").is_file()
    assert "Accuracy: 100.00" in proc.stdout
    assert judge.models == ["org/judge:1"] * 2

    # EXTRA_ARGS come last, so they can choose the strict mode (on a fresh judge directory).
    strict_env = {**env, "EXTRA_ARGS": env["EXTRA_ARGS"] + " --judge-mode strict", "JUDGE_MODEL": "judge-2"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/video/eval/eval_qa_msvd.sh"), "64"],
        env=strict_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    strict_out = json.loads((answers / "judge" / "judge-2" / "results.json").read_text())
    assert strict_out["summary"]["judge_mode"] == "strict"

    missing = subprocess.run(
        ["bash", str(REPO / "scripts/video/eval/eval_qa_tgif.sh"), "64"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "no merged predictions" in missing.stderr
