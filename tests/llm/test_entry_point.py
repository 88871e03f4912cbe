"""End to end: ``model_vqa_loader --method fastv`` on the tiny checkpoint records per-layer counts."""

from __future__ import annotations

import os

from llava.eval import model_vqa_loader
from tests.conftest import read_jsonl, write_vqa_questions


def _run(ckpt, questions, images, answers, *extra):
    model_vqa_loader.main(["--model-path", ckpt, "--question-file", questions, "--image-folder", images,
                           "--answers-file", answers, "--num-workers", "0", "--max_new_tokens", "4", *extra])
    return read_jsonl(answers)


def test_model_vqa_loader_fastv_writes_per_layer_counts(tiny_hf, image_folder, tmp_path):
    questions = write_vqa_questions(os.path.join(tmp_path, "q.jsonl"), 3)
    batched = _run(tiny_hf, questions, image_folder, str(tmp_path / "b.jsonl"),
                   "--method", "fastv", "--fastv-k", "2", "--batch-size", "3")
    single = _run(tiny_hf, questions, image_folder, str(tmp_path / "s.jsonl"), "--method", "fastv")
    assert [a["text"] for a in batched] == [a["text"] for a in single]
    for a in batched:
        meta = a["metadata"]
        assert meta["method"] == "fastv"
        assert meta["method_args"] == {"fastv_k": 2, "fastv_r": None, "visual_token_num": None,
                                       "llm_positions": "original"}
        assert meta["visual_tokens"] == 576  # the LLM input; the in-LLM counts follow
        assert meta["visual_tokens_per_layer"] == [576, 576, 288, 288]  # tiny LLaVA: 4 decoder layers
        assert meta["avg_visual_tokens"] == 432.0
