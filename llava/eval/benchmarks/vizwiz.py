"""VizWiz (test, server-scored): the EvalAI upload file, and a local VQA accuracy when annotations exist.

Upload (LLaVA's ``convert_vizwiz_for_submission``): for each question of ``llava_test.jsonl`` in
file order, ``{"image": <image file name>, "answer": normalize(text)}``; every question must have an
answer (upstream asserts it). Undecodable answer lines are skipped and counted, as upstream.

Local accuracy (only with ``--annotation-file``): VizWiz's own layout, a list of
``{"image", "answers": [{"answer": ...}, ...]}`` (``val.json``), joined to the answers through the
question file's ``image``; 10-annotator soft accuracy after EvalAI normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .common import ScorerInputError, check_unique_ids, qid_key
from .vqa_eval import normalize_answer, vqa_accuracy


def upload_answers(answers: Sequence[Mapping], questions: Sequence[Mapping]) -> list[dict[str, Any]]:
    check_unique_ids(answers, "VizWiz answers")
    results = {qid_key(a["question_id"]): a["text"] for a in answers}
    missing = [q["question_id"] for q in questions if qid_key(q["question_id"]) not in results]
    if missing:
        raise ScorerInputError(
            f"{len(missing)} of {len(questions)} VizWiz questions have no answer (first: {missing[0]!r}); "
            "the upload needs all of them")
    return [{"image": q["image"], "answer": normalize_answer(results[qid_key(q["question_id"])])}
            for q in questions]


def annotation_answers(annotation: Any) -> dict[str, list[str]]:
    """``{image file name: [gt answer, ...]}`` from a VizWiz annotation list."""
    if not isinstance(annotation, list):
        raise ScorerInputError("VizWiz annotation file is not a JSON list")
    out = {}
    for i, rec in enumerate(annotation):
        if not isinstance(rec, Mapping) or "image" not in rec or "answers" not in rec:
            raise ScorerInputError(f"VizWiz annotation record {i} lacks image/answers")
        out[str(rec["image"])] = [a["answer"] if isinstance(a, Mapping) else str(a) for a in rec["answers"]]
    return out


def local_accuracy(answers: Sequence[Mapping], questions: Sequence[Mapping],
                   gt: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    check_unique_ids(answers, "VizWiz answers")
    image_of = {qid_key(q["question_id"]): str(q["image"]) for q in questions}
    scores = []
    for a in answers:
        answers_gt = gt.get(image_of.get(qid_key(a["question_id"]), ""))
        if answers_gt:
            scores.append(vqa_accuracy(a["text"], answers_gt, expect=None))
    return {"accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0, "num_scored": len(scores)}
