"""The image entry points on the tiny Qwen2.5-VL checkpoint: its own chat format, a batch of images of different
sizes equal to single runs (with and without a method), resume, chunking, pixel flags, one-line refusals; the
generated scripts; the FLOPs geometry."""

from __future__ import annotations

import json

import pytest

from llava.eval import model_vqa_loader
from llava.model.qwen2_5_vl import build_prompt
from tests.conftest import read_jsonl


def _run(ckpt, questions, images, answers, *extra):
    model_vqa_loader.main(["--model-path", ckpt, "--question-file", questions, "--image-folder", images,
                           "--answers-file", answers, "--num-workers", "0", "--max_new_tokens", "4", *extra])
    return read_jsonl(answers)


def test_prompt_is_qwen_chat_format_with_the_question_unchanged():
    question = "Is there a dog?\nAnswer the question using a single word or phrase."
    prompt = build_prompt("<image>\n" + question)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>" + question + "<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt(question).count("<|image_pad|>") == 0


@pytest.mark.parametrize("method", [(), ("--method", "divprune", "--visual-token-num", "12"),
                                    ("--method", "fastv", "--visual-token-num", "10", "--fastv-k", "2")])
def test_batch_of_different_sizes_equals_single_runs(tiny_qwen, vqa_questions, image_folder, tmp_path, method):
    single = _run(tiny_qwen, vqa_questions, image_folder, str(tmp_path / "b1.jsonl"), *method)
    batched = _run(tiny_qwen, vqa_questions, image_folder, str(tmp_path / "b3.jsonl"), "--batch-size", "3", *method)
    assert [a["text"] for a in batched] == [a["text"] for a in single]
    assert [a["metadata"]["visual_tokens"] for a in batched] == [a["metadata"]["visual_tokens"] for a in single]
    assert single[0]["metadata"]["run"]["conv_mode"] == "qwen2_5_vl"
    tokens = [a["metadata"]["visual_tokens"] for a in single]
    if not method:
        assert len(set(tokens)) > 1 and max(tokens) <= 144  # dynamic resolution within the checkpoint's max_pixels
    elif method[1] == "divprune":
        assert max(tokens) <= 12
    else:
        assert all(a["metadata"]["visual_tokens_per_layer"][-1] <= 10 for a in single)


def test_resume_chunks_and_pixel_flags(tiny_qwen, vqa_questions, image_folder, tmp_path):
    full = _run(tiny_qwen, vqa_questions, image_folder, str(tmp_path / "all.jsonl"), "--batch-size", "2")
    chunks = [_run(tiny_qwen, vqa_questions, image_folder, str(tmp_path / f"c{i}.jsonl"), "--num-chunks", "2",
                   "--chunk-idx", str(i)) for i in range(2)]
    assert [a["text"] for a in chunks[0] + chunks[1]] == [a["text"] for a in full]
    # a cut answers file resumes where it stopped
    path = tmp_path / "resume.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in full[:2]))
    resumed = _run(tiny_qwen, vqa_questions, image_folder, str(path))
    assert [a["text"] for a in resumed] == [a["text"] for a in full]
    assert [a["answer_id"] for a in resumed[:2]] == [a["answer_id"] for a in full[:2]]
    # a smaller pixel range gives fewer tokens and is recorded with the answers
    small = _run(tiny_qwen, vqa_questions, image_folder, str(tmp_path / "small.jsonl"), "--max-pixels", str(28 * 28 * 8))
    assert max(a["metadata"]["visual_tokens"] for a in small) <= 8
    assert small[0]["metadata"]["run"]["max_pixels"] == 28 * 28 * 8


@pytest.mark.parametrize("flags, words", [
    (("--method", "fastervlm", "--visual-token-num", "8"), ["fastervlm", "qwen2.5-vl", "[CLS]"]),
    (("--method", "pdrop", "--llm-positions", "compact"), ["compact", "M-RoPE"]),
    (("--conv-mode", "llava_v1"), ["--conv-mode", "Qwen2.5-VL"]),
    (("--next-grid", "fixed-672"), ["--next-grid", "Qwen2.5-VL"]),
])
def test_bad_flags_on_qwen_are_one_clear_line(tiny_qwen, vqa_questions, image_folder, tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as exc:
        _run(tiny_qwen, vqa_questions, image_folder, str(tmp_path / "x.jsonl"), *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert all(w in err for w in words), err


def test_pixel_flags_on_llava_are_refused(tiny_hf, vqa_questions, image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _run(tiny_hf, vqa_questions, image_folder, str(tmp_path / "x.jsonl"), "--max-pixels", "1000")
    assert "Qwen2.5-VL checkpoints only" in capsys.readouterr().err


def test_qwen_scripts_cover_exactly_the_supported_methods():
    from llava.eval.make_scripts import expected_scripts, supported_script_folders

    folders = {path.split("/")[0] for path in expected_scripts("qwen2_5_vl")}
    assert folders == set(supported_script_folders("qwen2.5-vl"))
    assert {"baseline", "DivPrune", "Random", "Pool", "FastV", "PDrop", "SparseVLM", "DART"} <= folders
    assert not folders & {"FasterVLM", "VTC-CLS", "PruMerge", "PruMerge+", "VisionZip", "ToMe"}
