"""The answers-file writer: settings checked on resume, one writer per file, tail repair, question order, failed
writes, merging (issue 12, items 1-4 and 8)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from llava.eval import answers as answers_module
from llava.eval.answers import AnswersFileError, AnswerWriter, merge_chunks
from llava.eval.filelock import FileLockedError
from llava.eval.questions import answer_key
from llava.eval.run_settings import SettingsMismatchError, record_settings, run_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _record(qid, k=1, error=None, temperature=0.0):
    metadata = {"method": "fastv", "method_args": {"fastv_k": k, "visual_token_num": 64},
                "run": run_metadata("vicuna_v1", 8, temperature, None, 1, seed=0)}
    if error:
        metadata["error"] = error
    return {"question_id": qid, "text": f"answer {qid}", "model_id": "tiny", "metadata": metadata}


def _settings(**kwargs):
    return record_settings(_record(0, **kwargs))


def _key(qid):
    return answer_key({"question_id": qid})


def _write_file(path, records, end="\n"):
    path.write_text("\n".join(json.dumps(r) for r in records) + end)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _open(path, order=range(1, 6), **kwargs):
    kwargs.setdefault("settings", _settings())
    kwargs.setdefault("lock_wait_s", 0.1)
    return AnswerWriter(str(path), order=[_key(q) for q in order], notify=kwargs.pop("notify", lambda _: None),
                        **kwargs)


def test_resume_with_the_same_settings_skips_answered_questions(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_file(path, [_record(1), _record(2)])
    with _open(path) as writer:
        assert writer.is_answered(_key(1)) and writer.is_answered(_key(2)) and not writer.is_answered(_key(3))
        writer.write(_record(3), _key(3))
    assert [r["question_id"] for r in _read(path)] == [1, 2, 3]


def test_resume_refuses_answers_made_with_other_settings(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_file(path, [_record(1, k=1), _record(2, k=1)])
    before = path.read_bytes()
    with pytest.raises(SettingsMismatchError) as err:
        _open(path, settings=_settings(k=3))
    message = str(err.value)
    assert "method_args.fastv_k: 1 vs 3" in message and str(path) in message and "--overwrite" in message
    with pytest.raises(SettingsMismatchError, match=r"run.temperature: 0.0 vs 0.7"):
        _open(path, settings=_settings(temperature=0.7))
    assert path.read_bytes() == before
    # --overwrite starts fresh with the new settings
    with _open(path, settings=_settings(k=3), overwrite=True) as writer:
        assert not writer.answered
    assert path.read_text() == ""


def test_resume_refuses_records_without_run_settings(tmp_path):
    path = tmp_path / "a.jsonl"
    old = _record(1)
    del old["metadata"]["run"]
    _write_file(path, [old])
    with pytest.raises(SettingsMismatchError, match="written before run settings were recorded"):
        _open(path)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "a.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from llava.eval.answers import AnswerWriter\n"
        f"w = AnswerWriter({str(path)!r}, settings={{}}, order=[])\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(FileLockedError) as err:
            _open(path, lock_wait_s=0.5)
        assert time.monotonic() - started >= 0.5  # waited for a dying holder first
        assert f"pid {holder.pid}" in str(err.value) and "another process" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with _open(path, lock_wait_s=5):  # the lock dies with its holder
        pass


def test_a_complete_last_record_without_newline_is_not_glued_to_the_next(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_file(path, [_record(1), _record(2)], end="")  # the write was cut right after "}"
    with _open(path) as writer:
        assert writer.is_answered(_key(2))
        writer.write(_record(3), _key(3))
    with _open(path) as writer:  # a third run reads every line
        assert writer.answered == {_key(1), _key(2), _key(3)}
    assert [r["question_id"] for r in _read(path)] == [1, 2, 3]


def test_an_incomplete_last_line_is_dropped_with_a_note(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_file(path, [_record(1), _record(2)])
    with open(path, "a") as f:
        f.write('{"question_id": 3, "te')
    notes = []
    with _open(path, notify=notes.append) as writer:
        assert writer.answered == {_key(1), _key(2)}
        writer.write(_record(3), _key(3))
    assert len(notes) == 1 and "incomplete last line" in notes[0]
    assert [r["question_id"] for r in _read(path)] == [1, 2, 3]


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(_record(1)) + "\nnot json\n" + json.dumps(_record(2)) + "\n")
    with pytest.raises(AnswersFileError, match="line 2 is not a JSON answer record"):
        _open(path)


def test_retried_answers_are_put_back_in_question_order(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_file(path, [_record(1), _record(2, error="cannot read image"), _record(3), _record(4)])
    with _open(path, retry_errors=True) as writer:
        assert not writer.is_answered(_key(2))
        writer.write(_record(2), _key(2))
        writer.write(_record(5), _key(5))
    records = _read(path)
    assert [r["question_id"] for r in records] == [1, 2, 3, 4, 5]
    assert "error" not in records[1]["metadata"]


def test_a_failed_write_keeps_the_earlier_answers(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    _write_file(path, [_record(1), _record(2)])
    before = path.read_bytes()
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with _open(path) as writer:
        monkeypatch.setattr(answers_module.os, "write", full_disk)
        with pytest.raises(AnswersFileError, match="No space left on device; the 2 answers already in it are kept"):
            writer.write(_record(3), _key(3))
        monkeypatch.setattr(answers_module.os, "write", real_write)
    assert path.read_bytes() == before


def test_merge_refuses_chunks_made_with_different_settings(tmp_path):
    a, b, merged = tmp_path / "2_0.jsonl", tmp_path / "2_1.jsonl", tmp_path / "merged.jsonl"
    _write_file(a, [_record(1), _record(2)])
    _write_file(b, [_record(3, k=3)])
    with pytest.raises(SettingsMismatchError, match="method_args.fastv_k: 1 vs 3"):
        merge_chunks([str(a), str(b)], str(merged))
    assert not merged.exists()
    _write_file(b, [_record(3)], end="")
    assert merge_chunks([str(a), str(b)], str(merged)) == 3
    assert [r["question_id"] for r in _read(merged)] == [1, 2, 3]
