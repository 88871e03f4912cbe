"""Judge modes (upstream-compatible vs strict), --judge-prompt templates and what the cache records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("openai")

from videollava.eval import eval_video_qa  # noqa: E402
from videollava.eval.judge_prompt import (  # noqa: E402
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    builtin_prompt,
)

KEY = "sk-test-not-a-real-key"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def write_preds(path: Path, n: int) -> None:
    rows = [{"id": f"v_{i}", "question": f"q{i}", "answer": "a", "pred": "p"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_cli(tmp_path, api_base, *extra, out_dir="judge"):
    return eval_video_qa.main([
        "--pred-path", str(tmp_path / "preds.jsonl"),
        "--output-dir", str(tmp_path / out_dir),
        "--output-json", str(tmp_path / "out" / "results.json"),
        "--api-base", api_base,
        "--judge-model", "judge-1",
        "--num-workers", "3",
        "--max-retries", "2",
        "--backoff-base", "0.001",
        "--backoff-max", "0.01",
        "--no-progress",
        *extra,
    ])  # fmt: skip


def read_output(tmp_path):
    return json.loads((tmp_path / "out" / "results.json").read_text())


def canonical_sha256(system, user):
    """The documented prompt identity, computed here independently of the module."""
    text = json.dumps({"system": system, "user": user}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Replies of the fixture, one per question, and how the upstream script counts each one.
FIXTURE = {
    "q0": "{'pred': 'yes', 'score': 4.8}",  # yes, int(4.8) = 4
    "q1": "{'pred': 'no', 'score': '2'}",  # no, int('2') = 2
    "q2": "{'pred': 'Yes, mostly', 'score': 3}",  # 'yes' in 'yes, mostly' -> yes, 3
    "q3": "{'pred': 'maybe', 'score': 1}",  # no verdict, 1 (still in the score denominator)
    "q4": "{'pred': 'yes', 'score': 'high'}",  # int('high') raises: no score, no verdict, counted
    "q5": "```python\n{'pred': 'yes', 'score': 5}\n```",  # literal_eval fails: retried, then failed
    "q6": "{'pred': 'no', 'score': 0}",  # no, 0
    "q7": "{'pred': 'not sure', 'score': 2}",  # 'no' in 'not sure' -> no, 2
    "q8": "\"{'pred': 'yes', 'score': 5}\"",  # a string literal: accepted, then unreadable (no score)
}


def reference_upstream_aggregate(values: list) -> dict:
    """The upstream aggregation loop, restated: one pass over the accepted reply values."""
    count = score_sum = yes = no = 0
    for value in values:
        count += 1
        try:
            score_sum += int(value["score"])
            if "yes" in value["pred"].lower():
                yes += 1
            elif "no" in value["pred"].lower():
                no += 1
        except Exception:
            pass
    return {"count": count, "score_sum": score_sum, "yes": yes, "no": no}


def test_upstream_counts_float_and_string_scores():
    from videollava.eval.judge import judge_reply

    assert judge_reply("{'pred': 'yes', 'score': 4.8}", "upstream") == {"pred": "yes", "score": 4}
    assert judge_reply("{'pred': 'no', 'score': '2'}", "upstream") == {"pred": "no", "score": 2}


def test_upstream_mode_matches_hand_computed_upstream_numbers(tmp_path, fake_judge):
    judge, api_base = fake_judge
    judge.script.update({q: [(200, reply)] for q, reply in FIXTURE.items()})
    write_preds(tmp_path / "preds.jsonl", len(FIXTURE))
    assert run_cli(tmp_path, api_base) == 0  # upstream is the default
    out = read_output(tmp_path)
    s = out["summary"]
    # By hand: accepted q0 q1 q2 q3 q4 q6 q7 q8 -> count 8; q5 never parses -> failed.
    # score_sum = 4 + 2 + 3 + 1 + 0 + 2 = 12 -> average 12 / 8 = 1.5; yes = q0 q2, no = q1 q6 q7 -> 2 / 5.
    assert s["judge_mode"] == "upstream"
    assert (s["judged"], s["yes"], s["no"], s["failed"], s["score_sum"]) == (8, 2, 3, 1, 12)
    assert (s["no_verdict"], s["unscored"]) == (3, 2)
    assert s["accuracy"] == 0.4 and s["accuracy_pct"] == 40.0
    assert s["average_score"] == 1.5 and s["average_score_2dp"] == 1.5
    assert judge.hits["q5"] == 3 and judge.hits["q0"] == 1  # only the unparseable reply is retried
    assert out["results"]["v_0"]["score"] == 4 and out["results"]["v_1"]["score"] == 2
    assert out["results"]["v_4"]["score"] is None and out["results"]["v_4"]["judgement"] is None

    # The same numbers as the restated upstream loop over the values upstream would have stored.
    import ast

    stored = [json.loads(json.dumps(ast.literal_eval(r))) for q, r in FIXTURE.items() if q != "q5"]
    ref = reference_upstream_aggregate(stored)
    assert (ref["count"], ref["score_sum"], ref["yes"], ref["no"]) == (s["judged"], s["score_sum"], s["yes"], s["no"])
    assert s["average_score"] == ref["score_sum"] / ref["count"]
    assert s["accuracy"] == ref["yes"] / (ref["yes"] + ref["no"])


def test_strict_mode_unchanged(tmp_path, fake_judge):
    judge, api_base = fake_judge
    judge.script.update({q: [(200, reply)] for q, reply in FIXTURE.items()})
    write_preds(tmp_path / "preds.jsonl", len(FIXTURE))
    assert run_cli(tmp_path, api_base, "--judge-mode", "strict") == 0
    s = read_output(tmp_path)["summary"]
    # Strict accepts only q5 (fenced yes 5) and q6 (no 0); every other reply is retried, then failed.
    assert s["judge_mode"] == "strict"
    assert (s["judged"], s["yes"], s["no"], s["failed"]) == (2, 1, 1, 7)
    assert s["accuracy"] == 0.5 and s["average_score"] == 2.5 and s["score_denominator"] == 2
    assert judge.hits["q0"] == 3 and judge.hits["q6"] == 1


def test_cache_from_another_mode_or_prompt_is_refused(tmp_path, fake_judge, capsys):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", 3)
    assert run_cli(tmp_path, api_base) == 0
    assert judge.total_hits == 3
    capsys.readouterr()

    assert run_cli(tmp_path, api_base, "--judge-mode", "strict") == 1
    err = capsys.readouterr().err
    assert "judge_mode 'upstream' != 'strict'" in err and "--overwrite-stale" in err

    prompt = tmp_path / "prompt.json"
    prompt.write_text(json.dumps({"system": None, "user": "Question: {question}\nA: {answer}\nP: {pred}"}))
    assert run_cli(tmp_path, api_base, "--judge-prompt", str(prompt)) == 1
    assert "prompt_sha256" in capsys.readouterr().err
    assert judge.total_hits == 3  # nothing sent by the refused runs

    # Same settings again: reused; explicit --overwrite-stale: re-judged under the new prompt.
    assert run_cli(tmp_path, api_base) == 0 and judge.total_hits == 3
    assert run_cli(tmp_path, api_base, "--judge-prompt", str(prompt), "--overwrite-stale") == 0
    assert judge.total_hits == 6
    entry = json.loads((tmp_path / "judge" / "v_0.json").read_text())
    assert entry["prompt_sha256"] == canonical_sha256(None, "Question: {question}\nA: {answer}\nP: {pred}")


def test_format_1_entries_are_strict_builtin_prompt_entries(tmp_path, fake_judge):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", 2)
    assert run_cli(tmp_path, api_base, "--judge-mode", "strict") == 0
    for path in (tmp_path / "judge").glob("*.json"):  # rewrite as the previous release wrote them
        entry = json.loads(path.read_text())
        for key in ("judge_mode", "prompt_sha256", "prompt_source"):
            del entry[key]
        entry.update(cache_format=1, prompt_version=PROMPT_VERSION)
        path.write_text(json.dumps(entry))
    assert run_cli(tmp_path, api_base, "--judge-mode", "strict") == 0
    assert judge.total_hits == 2  # reused
    assert run_cli(tmp_path, api_base) == 1  # but not under the upstream mode
    assert judge.total_hits == 2


def test_judge_prompt_template_is_filled_and_its_hash_recorded(tmp_path, fake_judge):
    judge, api_base = fake_judge
    seen: list[list[dict]] = []
    respond = judge.respond

    def recording_respond(body, auth):
        seen.append(body["messages"])
        return respond(body, auth)

    judge.respond = recording_respond
    system = "Grade {{strictly}}; the gold answer is {answer}."
    user = "Question: {question}\nModel said: {pred}\nReply like {{'pred': 'yes', 'score': 4.8}}."
    prompt = tmp_path / "paper_prompt.json"
    prompt.write_text(json.dumps({"user": user, "system": system}, indent=3))
    write_preds(tmp_path / "preds.jsonl", 2)
    assert run_cli(tmp_path, api_base, "--judge-prompt", str(prompt), "--num-workers", "1") == 0
    assert seen[0] == [
        {"role": "system", "content": "Grade {strictly}; the gold answer is a."},
        {"role": "user", "content": "Question: q0\nModel said: p\nReply like {'pred': 'yes', 'score': 4.8}."},
    ]
    sha = canonical_sha256(system, user)
    out = read_output(tmp_path)
    assert out["summary"]["prompt_sha256"] == sha and out["judge"]["prompt_sha256"] == sha
    assert out["judge"]["prompt_source"] == str(prompt)
    assert {r["prompt_sha256"] for r in out["results"].values()} == {sha}
    assert {r["judge_mode"] for r in out["results"].values()} == {"upstream"}
    for i in range(2):
        entry = json.loads((tmp_path / "judge" / f"v_{i}.json").read_text())
        assert entry["prompt_sha256"] == sha and entry["judge_mode"] == "upstream"


def test_builtin_prompt_hash_is_the_documented_one(tmp_path):
    assert builtin_prompt().sha256 == canonical_sha256(SYSTEM_PROMPT, USER_TEMPLATE)
    restated = tmp_path / "builtin.json"
    restated.write_text(json.dumps({"system": SYSTEM_PROMPT, "user": USER_TEMPLATE}))
    from videollava.eval.judge_prompt import load_prompt_template

    assert load_prompt_template(restated).sha256 == builtin_prompt().sha256


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("{not json", "not valid JSON"),
        ('["x"]', "expected a JSON object"),
        ('{"user": "Q {question} {answer}"}', "never uses {pred}"),
        ('{"user": "Q {question} {answer} {pred} {video}"}', "unknown field {video}"),
        ('{"user": "Q {question} {answer} {pred} {\'pred\': 1}"}', "unknown field"),
        ('{"user": "Q {question} {answer} {pred} }"}', "not a valid format string"),
        ('{"user": "{question} {answer} {pred}", "sys": "x"}', "unknown keys ['sys']"),
    ],
)
def test_bad_prompt_template_is_one_clear_error(tmp_path, fake_judge, capsys, content, message):
    judge, api_base = fake_judge
    write_preds(tmp_path / "preds.jsonl", 1)
    prompt = tmp_path / "prompt.json"
    if content is not None:
        prompt.write_text(content)
    assert run_cli(tmp_path, api_base, "--judge-prompt", str(prompt)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "--judge-prompt" in err and len(err.splitlines()) == 1, err
    assert judge.total_hits == 0
