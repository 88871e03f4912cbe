"""POPE (COCO; adversarial / popular / random), as ``eval_pope`` computes it.

Rules reproduced exactly (evaluation.md §2.6):

* For each label file ``coco_pope_<split>.json`` (JSON lines, one ``{"label": ...}`` per question):
  the n-th label belongs to the n-th question of the question file with ``category == <split>``
  (the label file and the question file list the split's questions in the same order).
* Yes/no parsing: keep the text before the first ``.``; delete ``,``; split on single spaces; if a
  token is exactly ``No``, ``no`` or ``not`` the answer is no, otherwise yes (also for empty text).
* Labels: ``"no"`` is negative, anything else positive. Positive = yes.
* precision, recall, F1, accuracy over the zipped pairs; yes-ratio over all answers of the split.

Deviations: upstream pairs the split's answers, in answer-file order, with the labels by position, so
an answers file out of question order (a resumed or merged run) is scored against the wrong labels;
here each answer takes the label of its own question id, which gives the same numbers on a file in
question order. An answer to a question outside the question file, an answer repeated, and a question
without an answer in a split that has answers are errors; a split with no answers at all is listed in
``missing_splits``. Zero denominators give 0 instead of raising. Metrics are stored in percent.
Headline: the mean of the per-split F1 (FasterVLM's "Average F1"), over splits that have answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import ScorerInputError, pct, qid_key, read_json_or_jsonl, safe_div

LABEL_PREFIX = "coco_pope_"


def parse_yes_no(text: str) -> str:
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def split_metrics(texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of one split: ``texts`` are the raw answers in order, ``labels`` the label strings."""
    preds = [0 if parse_yes_no(t) == "no" else 1 for t in texts]
    gts = [0 if lab == "no" else 1 for lab in labels]
    tp = fp = tn = fn = 0
    for p, g in zip(preds, gts):
        if p == 1 and g == 1:
            tp += 1
        elif p == 1 and g == 0:
            fp += 1
        elif p == 0 and g == 0:
            tn += 1
        else:
            fn += 1
    precision = safe_div(tp, tp + fp)
    recall = safe_div(tp, tp + fn)
    f1 = safe_div(2 * precision * recall, precision + recall)
    return {
        "f1": 100 * f1, "accuracy": pct(tp + tn, tp + tn + fp + fn),
        "precision": 100 * precision, "recall": 100 * recall,
        "yes_ratio": pct(sum(preds), len(preds)),
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "num_answers": len(texts), "num_labels": len(labels),
    }


def score_pope(answers: Sequence[Mapping], questions: Sequence[Mapping],
               labels_by_split: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Per-split metrics and the mean F1. ``labels_by_split``: split name -> labels in file order."""
    category: dict[str, Any] = {}
    split_questions: dict[Any, list[str]] = {}
    for q in questions:
        key = qid_key(q["question_id"])
        category[key] = q.get("category")
        split_questions.setdefault(q.get("category"), []).append(key)
    answer_text: dict[str, str] = {}
    for a in answers:
        key = qid_key(a["question_id"])
        if key not in category:
            raise ScorerInputError(f"answer question_id {a['question_id']!r} is not in the POPE question file")
        if key in answer_text:
            raise ScorerInputError(f"question_id {a['question_id']!r} is answered twice; keep one answer per "
                                   "question (delete the repeats, or rerun with --overwrite)")
        answer_text[key] = a["text"]
    splits: dict[str, Any] = {}
    missing_splits = []
    warnings = []
    for split in sorted(labels_by_split):
        labels = list(labels_by_split[split])
        qids = split_questions.get(split, [])
        answered = [k for k in qids if k in answer_text]
        if not answered:
            missing_splits.append(split)
            continue
        if len(answered) != len(qids):
            unanswered = [k for k in qids if k not in answer_text]
            raise ScorerInputError(
                f"POPE split {split}: {len(unanswered)} of {len(qids)} questions have no answer (first: "
                f"{unanswered[0]}); finish the run (rerun it: it resumes)")
        if len(qids) != len(labels):
            warnings.append(f"{split}: {len(qids)} questions but {len(labels)} labels; the first "
                            f"{min(len(qids), len(labels))} are paired")
        # question order: the first len(labels) answers meet their own labels, as zip pairs them
        splits[split] = split_metrics([answer_text[k] for k in qids], labels)
    f1s = [m["f1"] for m in splits.values()]
    return {
        "mean_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "mean_accuracy": (sum(m["accuracy"] for m in splits.values()) / len(f1s)) if f1s else 0.0,
        "splits": splits, "missing_splits": missing_splits, "warnings": warnings,
    }


def load_labels(annotation_dir: str | Path) -> dict[str, list[str]]:
    """``{split: [label, ...]}`` from every ``coco_pope_<split>.json`` in ``annotation_dir``."""
    annotation_dir = Path(annotation_dir)
    if not annotation_dir.is_dir():
        raise ScorerInputError(f"POPE annotation directory not found: {annotation_dir}")
    out = {}
    for path in sorted(annotation_dir.iterdir()):
        if not (path.name.startswith(LABEL_PREFIX) and path.name.endswith(".json")):
            continue
        split = path.name[len(LABEL_PREFIX):-len(".json")]
        labels = []
        for i, rec in enumerate(read_json_or_jsonl(path, "POPE label file"), 1):
            if not isinstance(rec, dict) or "label" not in rec:
                raise ScorerInputError(f"POPE label file {path} record {i} has no 'label'")
            labels.append(rec["label"])
        out[split] = labels
    if not out:
        raise ScorerInputError(f"no coco_pope_*.json label files in {annotation_dir}")
    return out
