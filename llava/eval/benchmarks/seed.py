"""SEED-Bench (v1), as LLaVA's ``convert_seed_for_submission``.

* Correct iff ``answer text == ground-truth letter`` as an exact string (no strip, no parse:
  ``"A."`` is wrong).
* Every question of ``SEED-Bench.json`` counts; one without an answer is wrong.
* Accuracy per question type (``question_type_id``, named through ``question_type``), over all
  questions ("Total"), over ``data_type == "image"`` and over ``data_type == "video"``.
  The registry's headline is the image accuracy (the number most tables call SEED / SEED-I).
* Upload file: one line ``{"question_id", "prediction"}`` per annotation question, in annotation
  order (a question with no answer gets ``""``; upstream raises there).

Ids are joined on their string form (upstream tries ``int(question_id)`` first).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .common import ScorerInputError, check_unique_ids, pct, qid_key


def _questions(annotation: Mapping) -> list[Mapping]:
    questions = annotation.get("questions") if isinstance(annotation, Mapping) else None
    if not isinstance(questions, list):
        raise ScorerInputError("SEED-Bench annotation has no 'questions' list")
    for i, q in enumerate(questions):
        if not isinstance(q, Mapping) or not {"question_id", "answer", "question_type_id"} <= q.keys():
            raise ScorerInputError(f"SEED-Bench questions[{i}] lacks question_id/answer/question_type_id")
    return questions


def score_seed(answers: Sequence[Mapping], annotation: Mapping) -> dict[str, Any]:
    questions = _questions(annotation)
    names = {v: k for k, v in (annotation.get("question_type") or {}).items()}
    check_unique_ids(answers, "SEED-Bench answers")
    results = {qid_key(a["question_id"]): a["text"] for a in answers}
    per_type: dict[Any, list[int]] = defaultdict(list)
    per_data: dict[str, list[int]] = defaultdict(list)
    missing = 0
    for q in questions:
        key = qid_key(q["question_id"])
        missing += key not in results
        ok = int(key in results and results[key] == q["answer"])
        per_type[q["question_type_id"]].append(ok)
        per_data[str(q.get("data_type", ""))].append(ok)
    everything = [ok for v in per_type.values() for ok in v]
    return {
        "accuracy_image": pct(sum(per_data["image"]), len(per_data["image"])),
        "accuracy_video": pct(sum(per_data["video"]), len(per_data["video"])),
        "accuracy_total": pct(sum(everything), len(everything)),
        "per_type": {str(names.get(t, t)): pct(sum(v), len(v))
                     for t, v in sorted(per_type.items(), key=lambda x: (type(x[0]).__name__, x[0]))},
        "count_image": len(per_data["image"]), "count_video": len(per_data["video"]),
        "count": len(everything), "num_missing": missing,
    }


def upload_lines(answers: Sequence[Mapping], annotation: Mapping) -> list[dict[str, Any]]:
    check_unique_ids(answers, "SEED-Bench answers")
    results = {qid_key(a["question_id"]): a["text"] for a in answers}
    return [{"question_id": q["question_id"], "prediction": results.get(qid_key(q["question_id"]), "")}
            for q in _questions(annotation)]
