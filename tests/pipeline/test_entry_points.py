"""The LLaVA-1.5 evaluation entry points on the tiny checkpoint: batching, resume, chunking, errors."""

import json
import os
import re
import subprocess
import sys

import pytest

from llava.eval import model_vqa, model_vqa_loader, model_vqa_science
from llava.eval.inference import LlavaGenerator
from llava.eval.questions import split_list
from tests.conftest import read_jsonl, write_vqa_questions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWER_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


def _run(module, ckpt, questions, images, answers, *extra):
    module.main(["--model-path", ckpt, "--question-file", questions, "--image-folder", images,
                 "--answers-file", answers, "--num-workers", "0", "--max_new_tokens", "8", *extra])
    return read_jsonl(answers)


def _exit_message(capsys, fn) -> str:
    with pytest.raises(SystemExit) as exc:
        fn()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_answers_keep_llava_schema(tiny_hf, vqa_questions, image_folder, tmp_path):
    answers = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "a.jsonl"))
    questions = read_jsonl(vqa_questions)
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    for a, q in zip(answers, questions):
        assert set(a) == ANSWER_KEYS
        assert a["prompt"] == q["text"]  # exactly the question file's text, no <image> prefix
        assert a["model_id"] == "tiny-llava-hf"
        assert a["metadata"] == {"method": "none", "method_args": {}, "visual_tokens": 576,
                                 "run": {"conv_mode": "vicuna_v1", "max_new_tokens": 8, "temperature": 0.0,
                                         "top_p": None, "num_beams": 1}}
    assert len({a["text"] for a in answers}) > 1  # the image and question change the (random) answer


def test_batch_of_4_equals_batch_of_1(tiny_hf, vqa_questions, image_folder, tmp_path):
    single = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "b1.jsonl"))
    batched = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "b4.jsonl"),
                   "--batch-size", "4")
    assert [a["text"] for a in batched] == [a["text"] for a in single]


def test_original_layout_answers_equal_hf_layout(tiny_hf, tiny_original, vqa_questions, image_folder, tmp_path):
    hf = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "hf.jsonl"), "--batch-size", "3")
    orig = _run(model_vqa_loader, tiny_original, vqa_questions, image_folder, str(tmp_path / "or.jsonl"))
    assert [a["text"] for a in hf] == [a["text"] for a in orig]


def test_resume_after_killed_run_neither_duplicates_nor_loses(tiny_hf, vqa_questions, image_folder, tmp_path,
                                                               monkeypatch):
    reference = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "ref.jsonl"))
    answers_file = str(tmp_path / "a.jsonl")
    real_generate = LlavaGenerator.generate
    calls = {"n": 0}

    def dying_generate(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated kill")
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(LlavaGenerator, "generate", dying_generate)
    with pytest.raises(RuntimeError, match="simulated kill"):
        _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers_file, "--batch-size", "2")
    monkeypatch.setattr(LlavaGenerator, "generate", real_generate)
    first = read_jsonl(answers_file)
    assert len(first) == 4
    with open(answers_file, "a") as f:  # the kill also cut a write in half
        f.write('{"question_id": 104, "prompt": "Is th')
    resumed = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers_file)
    ids = [a["question_id"] for a in resumed]
    assert ids == [a["question_id"] for a in reference]  # every question once, in order
    assert resumed[:4] == first  # nothing already written was touched
    assert [a["text"] for a in resumed] == [a["text"] for a in reference]
    # a third run has nothing to do
    assert _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers_file) == resumed
    # --overwrite starts fresh
    fresh = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers_file, "--overwrite")
    assert [a["question_id"] for a in fresh] == ids and fresh[0]["answer_id"] != resumed[0]["answer_id"]


def test_three_chunks_cover_every_question_once(tiny_hf, image_folder, tmp_path):
    questions = write_vqa_questions(str(tmp_path / "q.jsonl"), 7)
    merged = []
    for idx in range(3):
        merged += _run(model_vqa_loader, tiny_hf, questions, image_folder, str(tmp_path / f"3_{idx}.jsonl"),
                       "--num-chunks", "3", "--chunk-idx", str(idx))
    whole = _run(model_vqa_loader, tiny_hf, questions, image_folder, str(tmp_path / "whole.jsonl"))
    assert [a["question_id"] for a in merged] == [a["question_id"] for a in whole]
    assert [a["text"] for a in merged] == [a["text"] for a in whole]


def test_split_list_guards_more_chunks_than_items():
    assert split_list(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    chunks = split_list(list(range(10)), 8)  # LLaVA's get_chunk raises IndexError here
    assert len(chunks) == 8 and sum(chunks, []) == list(range(10)) and chunks[-1] == []


def test_missing_image_fails_clearly_and_keeps_answers(tiny_hf, image_folder, tmp_path, capsys):
    questions = write_vqa_questions(str(tmp_path / "q.jsonl"), 5, missing_image_at=3)
    answers_file = str(tmp_path / "a.jsonl")
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, questions, image_folder, answers_file))
    assert "question 103" in err and "missing.png" in err and "--skip-bad-inputs" in err
    assert [a["question_id"] for a in read_jsonl(answers_file)] == [100, 101, 102]

    answers = _run(model_vqa_loader, tiny_hf, questions, image_folder, answers_file, "--skip-bad-inputs")
    assert [a["question_id"] for a in answers] == [100, 101, 102, 103, 104]
    assert "image not found" in answers[3]["metadata"]["error"] and answers[3]["text"] == ""
    assert all("error" not in a["metadata"] for a in answers[:3] + answers[4:])

    # the image appears: --retry-errors reruns only that question
    os.symlink(os.path.join(image_folder, "img0.png"), os.path.join(image_folder, "missing.png"))
    try:
        retried = _run(model_vqa_loader, tiny_hf, questions, image_folder, answers_file, "--retry-errors")
    finally:
        os.remove(os.path.join(image_folder, "missing.png"))
    assert [a["question_id"] for a in retried] == [100, 101, 102, 103, 104]  # still in question order
    assert all("error" not in a["metadata"] for a in retried)
    assert retried[:3] + retried[4:] == answers[:3] + answers[4:]


def test_resume_refuses_answers_made_with_other_settings(tiny_hf, vqa_questions, image_folder, tmp_path, capsys):
    """A rerun with another method argument, decoding setting or method must not resume (and re-score) the
    first run's answers."""
    answers_file = str(tmp_path / "a.jsonl")
    fastv = ["--method", "fastv", "--visual-token-num", "64"]
    _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers_file, *fastv, "--fastv-k", "1")
    before = open(answers_file).read()
    capsys.readouterr()
    for extra, difference in [([*fastv, "--fastv-k", "3"], "method_args.fastv_k: 1 vs 3"),
                              ([*fastv, "--fastv-k", "1", "--max_new_tokens", "6"], "run.max_new_tokens: 8 vs 6"),
                              (["--method", "none"], 'method: "fastv" vs "none"')]:
        err = _exit_message(capsys, lambda extra=extra: _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder,
                                                             answers_file, *extra))
        assert difference in err and answers_file in err and "--overwrite" in err
        assert len(err.strip().splitlines()) == 1
    assert open(answers_file).read() == before
    again = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers_file, *fastv, "--fastv-k", "1")
    assert open(answers_file).read() == before and len(again) == 6


def test_two_loaders_on_one_answers_file_answer_each_question_once(tiny_hf, image_folder, tmp_path):
    questions = write_vqa_questions(str(tmp_path / "q.jsonl"), 6)
    answers_file = str(tmp_path / "a.jsonl")
    cmd = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", tiny_hf, "--question-file", questions,
           "--image-folder", image_folder, "--answers-file", answers_file, "--num-workers", "0", "--max_new_tokens", "8"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    answers = read_jsonl(answers_file)
    assert [a["question_id"] for a in answers] == list(range(100, 106))
    for proc, (_, err) in zip(procs, outs):  # the second either waited for the first, or stopped naming it
        assert proc.returncode == 0 or (proc.returncode == 2 and "being written by another process (pid" in err), err
        assert "Traceback" not in err


def test_rerun_after_a_write_cut_after_the_closing_brace(tiny_hf, vqa_questions, image_folder, tmp_path):
    answers_file = tmp_path / "a.jsonl"
    full = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(answers_file))
    lines = answers_file.read_text().splitlines()
    answers_file.write_text("\n".join(lines[:4]))  # killed right after the 4th record's "}"
    resumed = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(answers_file))
    assert resumed == full[:4] + resumed[4:] and [a["text"] for a in resumed] == [a["text"] for a in full]
    assert _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(answers_file)) == resumed


@pytest.mark.filterwarnings("ignore:Image size")
def test_an_image_over_the_pixel_limit_is_a_bad_input(tiny_hf, image_folder, tmp_path, monkeypatch, capsys):
    from PIL import Image

    # img1.png (301 x 640 = 192,640 pixels) is over twice the limit: an error; img0 and img2 only warn
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 90_000)
    questions = write_vqa_questions(str(tmp_path / "q.jsonl"), 3)
    answers_file = str(tmp_path / "a.jsonl")
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, questions, image_folder, answers_file))
    assert "question 101: image" in err and "img1.png is too large to open safely" in err
    assert [a["question_id"] for a in read_jsonl(answers_file)] == [100]
    answers = _run(model_vqa_loader, tiny_hf, questions, image_folder, answers_file, "--skip-bad-inputs")
    assert [a["question_id"] for a in answers] == [100, 101, 102]
    assert "too large to open safely" in answers[1]["metadata"]["error"]


@pytest.mark.parametrize(
    "content, message",
    [('{"question_id": 1, "image": "img0.png", "text": "q"}\n{"question_id": 2,\n', "line 2: not valid JSON"),
     ('{"question_id": 1, "image": "img0.png"}\n', r"missing field\(s\) \['text'\]"),
     ('[{"question_id": 1, "text": "a"}]\n', "expected a JSON object, got list")],
)
def test_malformed_question_file(tiny_hf, image_folder, tmp_path, capsys, content, message):
    questions = tmp_path / "q.jsonl"
    questions.write_text(content)
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, str(questions), image_folder,
                                             str(tmp_path / "a.jsonl")))
    assert "q.jsonl" in err
    assert re.search(message, err)


def test_bad_arguments_fail_before_model_work(tiny_hf, vqa_questions, image_folder, tmp_path, capsys):
    answers = str(tmp_path / "a.jsonl")
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers,
                                             "--method", "nosuchmethod"))
    assert "unknown compression method 'nosuchmethod'" in err
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers,
                                             "--temperature", "-1"))
    assert "--temperature must be >= 0" in err
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, str(tmp_path), vqa_questions, image_folder, answers))
    assert "config.json is missing" in err
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, str(tmp_path / "none.jsonl"), image_folder,
                                             answers))
    assert "question file not found" in err
    err = _exit_message(capsys, lambda: _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, answers,
                                             "--num-chunks", "2", "--chunk-idx", "2"))
    assert "--chunk-idx" in err
    assert not os.path.exists(answers) or read_jsonl(answers) == []


def test_sampling_is_seeded(tiny_hf, vqa_questions, image_folder, tmp_path):
    a = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "s1.jsonl"),
             "--temperature", "0.9", "--seed", "3")
    b = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "s2.jsonl"),
             "--temperature", "0.9", "--seed", "3")
    greedy = _run(model_vqa_loader, tiny_hf, vqa_questions, image_folder, str(tmp_path / "g.jsonl"))
    assert [x["text"] for x in a] == [x["text"] for x in b]
    assert [x["text"] for x in a] != [x["text"] for x in greedy]


def _science_file(tmp_path) -> str:
    items = [
        {"id": "sq1", "image": "img0.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: a picture.\nQuestion: Which shape is red?\nOptions: (A) circle (B) square"},
            {"from": "gpt", "value": "A"}]},
        {"id": "sq2", "conversations": [
            {"from": "human", "value": "Context: none.\nQuestion: Which is bigger?\nOptions: (A) sun (B) ant"},
            {"from": "gpt", "value": "A"}]},
        {"id": "sq3", "image": "img2.png", "conversations": [
            {"from": "human", "value": "Question: What color is the box?\nOptions: (A) green (B) blue\n<image>"},
            {"from": "gpt", "value": "A"}]},
    ]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(items))
    return str(path)


def test_science_prompts_text_only_items_and_batching(tiny_hf, image_folder, tmp_path):
    questions = _science_file(tmp_path)
    single = _run(model_vqa_science, tiny_hf, questions, image_folder, str(tmp_path / "s1.jsonl"),
                  "--single-pred-prompt")
    batched = _run(model_vqa_science, tiny_hf, questions, image_folder, str(tmp_path / "s3.jsonl"),
                   "--single-pred-prompt", "--batch-size", "3")
    suffix = "\nAnswer with the option's letter from the given choices directly."
    assert single[0]["prompt"] == ("<image>\nContext: a picture.\nQuestion: Which shape is red?\n"
                                   "Options: (A) circle (B) square" + suffix)
    assert single[1]["prompt"] == "Context: none.\nQuestion: Which is bigger?\nOptions: (A) sun (B) ant" + suffix
    assert single[2]["prompt"].startswith("<image>\nQuestion: What color") and "\n<image>" not in single[2]["prompt"]
    assert [a["metadata"]["visual_tokens"] for a in single] == [576, 0, 576]
    assert [a["text"] for a in batched] == [a["text"] for a in single]


def test_model_vqa_open_ended(tiny_hf, vqa_questions, image_folder, tmp_path):
    answers = _run(model_vqa, tiny_hf, vqa_questions, image_folder, str(tmp_path / "a.jsonl"))
    assert len(answers) == 6 and all(set(a) == ANSWER_KEYS for a in answers)


def test_repeated_question_ids_are_answered_once_each_and_resume(tiny_hf, image_folder, tmp_path):
    """MME asks two questions per image under one question_id; both are answered, a rerun adds nothing."""
    questions = tmp_path / "mme.jsonl"
    questions.write_text("".join(json.dumps({"question_id": f"existence/img{i // 2}.png", "image": f"img{i // 2}.png",
                                             "text": f"Is there a {['circle', 'dog'][i % 2]}? Please answer yes or no."})
                                 + "\n" for i in range(6)))
    answers_file = str(tmp_path / "a.jsonl")
    first = _run(model_vqa_loader, tiny_hf, str(questions), image_folder, answers_file, "--num-chunks", "2",
                 "--chunk-idx", "0")
    assert [a["prompt"].split()[3] for a in first] == ["circle?", "dog?", "circle?"]
    again = _run(model_vqa_loader, tiny_hf, str(questions), image_folder, answers_file, "--num-chunks", "2",
                 "--chunk-idx", "0")
    assert again == first
    lines = open(answers_file).read().splitlines()
    with open(answers_file, "w") as f:  # lose the last answer: exactly that question reruns
        f.write("\n".join(lines[:2]) + "\n")
    resumed = _run(model_vqa_loader, tiny_hf, str(questions), image_folder, answers_file, "--num-chunks", "2",
                   "--chunk-idx", "0")
    assert [a["prompt"] for a in resumed] == [a["prompt"] for a in first]
