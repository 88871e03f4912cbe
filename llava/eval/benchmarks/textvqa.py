"""TextVQA (val, with OCR tokens in the prompt), as ``eval_textvqa`` computes it.

Rules reproduced exactly (evaluation.md §2.4):

* Annotations are indexed by ``(image_id, question.lower())``.
* The question is recovered from the answer's stored ``prompt`` (:func:`prompt_question`), so the
  prompt must be the untouched question-file text; the answer's ``question_id`` is the image id.
* Each answer is scored with the 10-annotator soft accuracy after EvalAI normalisation
  (:mod:`.vqa_eval`); the dataset score is ``100 * mean`` over the *answers present* (questions with
  no answer are not counted, as upstream).

Ids repeat in the question file (one image, several questions), so an answer is identified by its image
and its question; the same (image, question) answered twice is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import AnswerIdError, ScorerInputError, read_json
from .vqa_eval import vqa_accuracy

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def prompt_question(prompt: str) -> str:
    """The lower-cased question inside a stored prompt (upstream ``prompt_processor``)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        if match is None:
            raise ValueError("prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot find the question in a {len(lines)}-line prompt")
    return question.lower()


def index_annotations(annotation: Mapping) -> dict[tuple[str, str], Mapping]:
    data = annotation.get("data") if isinstance(annotation, Mapping) else None
    if not isinstance(data, list):
        raise ScorerInputError("TextVQA annotation file has no 'data' list")
    index = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping) or not {"image_id", "question", "answers"} <= entry.keys():
            raise ScorerInputError(f"TextVQA annotation data[{i}] lacks image_id/question/answers")
        index[(str(entry["image_id"]), entry["question"].lower())] = entry
    return index


def score_textvqa(answers: Sequence[Mapping], annotation: Mapping) -> dict[str, Any]:
    index = index_annotations(annotation)
    scores = []
    seen: set[tuple[str, str]] = set()
    for i, ans in enumerate(answers, 1):
        try:
            question = prompt_question(str(ans.get("prompt", "")))
        except ValueError as e:
            raise ScorerInputError(f"answer {i} (question_id {ans['question_id']!r}): {e}") from None
        if (str(ans["question_id"]), question) in seen:
            raise AnswerIdError(f"answer {i}: image {ans['question_id']!r} and question {question!r} are answered "
                                "twice; keep one answer per question (delete the repeats, or rerun with --overwrite)")
        seen.add((str(ans["question_id"]), question))
        entry = index.get((str(ans["question_id"]), question))
        if entry is None:
            raise ScorerInputError(
                f"answer {i}: no annotation for image {ans['question_id']!r} and question {question!r}")
        try:
            scores.append(vqa_accuracy(ans["text"], entry["answers"], expect=10))
        except ValueError as e:
            raise ScorerInputError(f"annotation of image {ans['question_id']!r}: {e}") from None
    return {"accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0, "num_scored": len(scores)}


def load_annotation(path: str | Path) -> Mapping:
    return read_json(path, "TextVQA annotation file")
