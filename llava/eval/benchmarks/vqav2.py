"""VQAv2 (test-dev, server-scored): the EvalAI upload file, and a local VQA accuracy when annotations exist.

Upload (LLaVA's ``convert_vqav2_for_submission``): for every question of the *full* test2015 list
``llava_vqav2_mscoco_test2015.jsonl``, in its order, ``{"question_id", "answer": normalize(text)}``,
or ``""`` when the question has no answer; a JSON list. Undecodable answer lines are skipped and
counted (``error_lines``), as upstream.

Local accuracy (only with ``--annotation-file``, e.g. a val split): the official VQA annotation
layout ``{"annotations": [{"question_id", "answers": [{"answer": ...}, ...]}]}`` (or a list of such
records); each answer scores the 10-annotator soft accuracy after EvalAI normalisation
(:mod:`.vqa_eval`, the m4c / lmms-eval form of the metric), averaged over the answered questions that
have annotations. The test-dev number itself can only come from the EvalAI server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .common import ScorerInputError, check_unique_ids, qid_key
from .vqa_eval import normalize_answer, vqa_accuracy


def upload_answers(answers: Sequence[Mapping], test_questions: Sequence[Mapping]) -> list[dict[str, Any]]:
    check_unique_ids(answers, "VQAv2 answers")
    results = {qid_key(a["question_id"]): a["text"] for a in answers}
    out = []
    for q in test_questions:
        key = qid_key(q["question_id"])
        out.append({"question_id": q["question_id"],
                    "answer": normalize_answer(results[key]) if key in results else ""})
    return out


def annotation_answers(annotation: Any) -> dict[str, list[str]]:
    """``{question_id: [gt answer, ...]}`` from an official VQA annotation file (or a list of records)."""
    records = annotation.get("annotations") if isinstance(annotation, Mapping) else annotation
    if not isinstance(records, list):
        raise ScorerInputError("VQA annotation file has no 'annotations' list")
    out = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "question_id" not in rec or "answers" not in rec:
            raise ScorerInputError(f"VQA annotation record {i} lacks question_id/answers")
        out[qid_key(rec["question_id"])] = [a["answer"] if isinstance(a, Mapping) else str(a)
                                           for a in rec["answers"]]
    return out


def local_accuracy(answers: Sequence[Mapping], gt: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    check_unique_ids(answers, "VQAv2 answers")
    scores = []
    for a in answers:
        answers_gt = gt.get(qid_key(a["question_id"]))
        if answers_gt:
            scores.append(vqa_accuracy(a["text"], answers_gt, expect=None))
    return {"accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0, "num_scored": len(scores)}
