"""GQA testdev-balanced accuracy, as LLaVA's ``convert_gqa_for_eval`` + the patched official ``eval.py``.

* Conversion: ``prediction = text.rstrip('.').lower()`` and nothing else; records
  ``{"questionId", "prediction"}``. A question id answered twice is an error (upstream keeps the
  later one).
* Score: over the questions of ``testdev_balanced_questions.json`` with ``isBalanced``,
  correct iff ``prediction == answer`` (exact string). Accuracy = 100 * mean. Binary / open split by
  ``types.structural == "query"`` (open) as the official script does; also per structural and
  semantic type. Validity, plausibility, consistency and distribution are not computed (the patched
  script prints 0 for them).

Deviation: the official script refuses to score when a balanced question has no prediction; here
a missing prediction counts as wrong and ``num_missing`` reports it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .common import ScorerInputError, check_unique_ids, pct, qid_key


def convert_for_eval(answers: Sequence[Mapping]) -> list[dict[str, Any]]:
    check_unique_ids(answers, "GQA answers")
    return [{"questionId": a["question_id"], "prediction": a["text"].rstrip(".").lower()} for a in answers]


def score_gqa(questions: Mapping[str, Mapping], predictions: Sequence[Mapping]) -> dict[str, Any]:
    if not isinstance(questions, Mapping):
        raise ScorerInputError("GQA questions file is not a JSON object keyed by question id")
    check_unique_ids(predictions, "GQA predictions", key=lambda p: qid_key(p["questionId"]))
    preds = {qid_key(p["questionId"]): p["prediction"] for p in predictions}
    hits: list[int] = []
    by_type: dict[str, dict[str, list[int]]] = {"binary_open": defaultdict(list),
                                                 "structural": defaultdict(list),
                                                 "semantic": defaultdict(list)}
    missing = 0
    for qid, q in questions.items():
        if not isinstance(q, Mapping) or "answer" not in q:
            raise ScorerInputError(f"GQA question {qid} has no 'answer'")
        if not q.get("isBalanced", False):
            continue
        key = qid_key(qid)
        if key not in preds:
            missing += 1
        ok = int(preds.get(key) == q["answer"])
        hits.append(ok)
        types = q.get("types") or {}
        structural = types.get("structural")
        by_type["binary_open"]["open" if structural == "query" else "binary"].append(ok)
        if structural is not None:
            by_type["structural"][structural].append(ok)
        if types.get("semantic") is not None:
            by_type["semantic"][types["semantic"]].append(ok)
    bo = by_type["binary_open"]
    return {
        "accuracy": pct(sum(hits), len(hits)),
        "binary": pct(sum(bo["binary"]), len(bo["binary"])),
        "open": pct(sum(bo["open"]), len(bo["open"])),
        "per_structural": {k: pct(sum(v), len(v)) for k, v in sorted(by_type["structural"].items())},
        "per_semantic": {k: pct(sum(v), len(v)) for k, v in sorted(by_type["semantic"].items())},
        "count": len(hits), "correct": sum(hits), "num_missing": missing,
    }
