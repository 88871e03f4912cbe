"""Zero-shot video QA files: join by question_id, subsets, video lookup, malformed files."""

from __future__ import annotations

import json

import pytest

from videollava.eval.video_qa_data import (
    DATASETS,
    VideoQADataError,
    get_dataset,
    load_dataset_split,
    load_qa_pairs,
    resolve_video_path,
)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


QUESTIONS = [
    {
        "video_name": "jfrrO5K_vKM_55_65",
        "question_id": "v_jfrrO5K_vKM_55_65_0",
        "question": "who opened the box?",
    },
    {
        "video_name": "jfrrO5K_vKM_55_65",
        "question_id": "v_jfrrO5K_vKM_55_65_1",
        "question": "what is opened?",
    },
    {"video_name": "abc", "question_id": 7, "question": "what colour?"},
]
# Answers deliberately in another order: the join must go by id, not by position.
ANSWERS = [
    {"answer": "box", "type": 1, "question_id": "v_jfrrO5K_vKM_55_65_1"},
    {"answer": 3, "type": 2, "question_id": "7"},
    {"answer": "someone", "type": 0, "question_id": "v_jfrrO5K_vKM_55_65_0"},
]


def test_join_by_question_id_keeps_question_order(tmp_path):
    items = load_qa_pairs(_write(tmp_path / "q.json", QUESTIONS), _write(tmp_path / "a.json", ANSWERS))
    assert [i.question_id for i in items] == ["v_jfrrO5K_vKM_55_65_0", "v_jfrrO5K_vKM_55_65_1", 7]
    assert [i.answer for i in items] == ["someone", "box", "3"]
    assert [i.answer_type for i in items] == [0, 1, 2]
    assert items[0].video_name == "jfrrO5K_vKM_55_65" and items[0].question == "who opened the box?"


@pytest.mark.parametrize(
    "questions, answers, message",
    [
        ("{not json", ANSWERS, "not valid JSON"),
        ({"a": 1}, ANSWERS, "must hold a JSON array"),
        ([{"video_name": "x", "question": "q"}], ANSWERS, "no 'question_id' field"),
        ([{"video_name": "x", "question_id": "a", "question": 5}], ANSWERS, "field 'question' must be str"),
        (["oops"], ANSWERS, "item 0 is a str"),
        (QUESTIONS + [QUESTIONS[0]], ANSWERS, "appears twice"),
        (QUESTIONS, ANSWERS + [ANSWERS[0]], "appears twice"),
        (QUESTIONS, ANSWERS[:2], "no answer for question_id 'v_jfrrO5K_vKM_55_65_0'"),
        (QUESTIONS[:2], ANSWERS, "1 answer\\(s\\) have no question"),
        (QUESTIONS, [{"type": 1, "question_id": "x"}], "no 'answer' field"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, questions, answers, message):
    q = _write(tmp_path / "test_q.json", questions)
    a = _write(tmp_path / "test_a.json", answers)
    with pytest.raises(VideoQADataError, match=message):
        load_qa_pairs(q, a)


def test_missing_file(tmp_path):
    a = _write(tmp_path / "test_a.json", ANSWERS)
    with pytest.raises(VideoQADataError, match="question file not found"):
        load_qa_pairs(tmp_path / "nope.json", a)


def test_dataset_layout_and_subsets(tmp_path):
    msvd = get_dataset("MSVD")
    assert msvd.video_dir(tmp_path) == tmp_path / "MSVD_Zero_Shot_QA" / "videos"
    assert get_dataset("msrvtt").video_dir(tmp_path) == tmp_path / "MSRVTT_Zero_Shot_QA" / "videos" / "all"
    assert get_dataset("TGIF").video_dir(tmp_path) == tmp_path / "TGIF_Zero_Shot_QA" / "mp4"
    anet = get_dataset("ActivityNet")
    assert anet is DATASETS["activitynet"] and anet.video_prefix == "v_"
    assert anet.video_dir(tmp_path) == tmp_path / "Activitynet_Zero_Shot_QA" / "all_test"
    with pytest.raises(KeyError):
        get_dataset("nextqa")

    root = tmp_path / "MSVD_Zero_Shot_QA"
    _write(root / "test_q_1k.json", QUESTIONS[:1])
    _write(root / "test_a_1k.json", ANSWERS[2:])
    _write(root / "test_q.json", QUESTIONS)
    _write(root / "test_a.json", ANSWERS)
    assert len(load_dataset_split("msvd", tmp_path)) == 1  # default subset: FasterVLM's 1k files
    assert len(load_dataset_split("msvd", tmp_path, subset="full")) == 3
    with pytest.raises(ValueError):
        load_dataset_split("msvd", tmp_path, subset="2k")


def test_resolve_video_path_extension_order_and_prefix(tmp_path):
    for name in ("a.avi", "a.mkv", "b.mov", "v_c.mkv", "c.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert resolve_video_path(tmp_path, "a") == tmp_path / "a.avi"  # .mp4 first, then .avi
    (tmp_path / "a.mp4").write_bytes(b"x")
    assert resolve_video_path(tmp_path, "a") == tmp_path / "a.mp4"
    assert resolve_video_path(tmp_path, "b") == tmp_path / "b.mov"
    assert resolve_video_path(tmp_path, "c", prefix="v_") == tmp_path / "v_c.mkv"
    assert resolve_video_path(tmp_path, "missing") is None
    (tmp_path / "d.webm").write_bytes(b"x")
    assert resolve_video_path(tmp_path, "d") is None
    assert resolve_video_path(tmp_path, "d", extensions=(".webm",)) == tmp_path / "d.webm"
