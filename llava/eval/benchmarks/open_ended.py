"""MM-Vet and LLaVA-Bench-in-the-Wild: files for GPT judging (the judge itself comes later).

* MM-Vet (LLaVA's ``convert_mmvet_for_eval``): ``{"v1_<question_id>": text}`` in answer order, the
  input of the official MM-Vet grader.
* LLaVA-Bench: one JSON line per question, in question-file order, with everything the
  ``eval_gpt_review_bench`` judge reads: the question, its category, the image's captions (context),
  the GPT-4 reference answer and the candidate answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .common import check_unique_ids, qid_key


def mmvet_results(answers: Sequence[Mapping]) -> dict[str, str]:
    check_unique_ids(answers, "MM-Vet answers")
    return {f"v1_{a['question_id']}": a["text"] for a in answers}


def llavabench_review_inputs(answers: Sequence[Mapping], questions: Sequence[Mapping],
                             contexts: Sequence[Mapping], references: Sequence[Mapping]) -> list[dict[str, Any]]:
    caption = {str(c.get("image")): c.get("caption", "") for c in contexts}
    reference = {qid_key(r["question_id"]): r.get("text", "") for r in references}
    check_unique_ids(answers, "LLaVA-Bench answers")
    candidate = {qid_key(a["question_id"]): a["text"] for a in answers}
    out = []
    for q in questions:
        key = qid_key(q["question_id"])
        out.append({"question_id": q["question_id"], "category": q.get("category"), "image": q.get("image"),
                    "question": q.get("text"), "context": caption.get(str(q.get("image")), ""),
                    "reference": reference.get(key), "answer": candidate.get(key)})
    return out
