"""ScienceQA (test split): accuracy over all problems and IMG-accuracy, as ``eval_science_qa`` computes them.

Rules reproduced exactly (evaluation.md §2.5):

* Every pid of the split is scored. A missing prediction becomes text ``"FAILED"`` with prompt
  ``"Unknown"`` (so it is wrong, and it falls out of the IMG subset).
* Letter parsing, in order: the text is exactly one of ``A``-``E``; else ``len >= 3`` and
  ``text[0]`` is one of ``A``-``E`` and ``text[1:3] == ". "``; else the regex
  ``The answer is ([A-Z]).`` (the ``.`` matches any character) has exactly one match; else FAILED.
  No stripping: ``"(B)"``, ``"B)"`` and ``"The answer is B"`` (nothing after the letter) fail.
* ``pred_idx`` = position of the letter among the first ``len(choices)`` options, else -1;
  correct iff ``pred_idx == problem["answer"]``.
* IMG = predictions whose stored ``prompt`` contains ``<image>`` (this is "SQA-IMG", the headline).

The subject/context/grade breakdown (NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12) is the ScienceQA
paper's convention, computed from ``problems.json`` fields; upstream LLaVA does not print it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ScorerInputError, check_unique_ids, pct, qid_key, read_json

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"

SUBSETS = {
    "NAT": lambda p: p.get("subject") == "natural science",
    "SOC": lambda p: p.get("subject") == "social science",
    "LAN": lambda p: p.get("subject") == "language science",
    "TXT": lambda p: bool(p.get("hint")),
    "IMG": lambda p: bool(p.get("image")),
    "NO": lambda p: not p.get("hint") and not p.get("image"),
    "G1-6": lambda p: p.get("grade") in {f"grade{i}" for i in range(1, 7)},
    "G7-12": lambda p: p.get("grade") in {f"grade{i}" for i in range(7, 13)},
}


def parse_letter(text: str) -> str:
    """The option letter the scorer reads from an answer, or ``"FAILED"``."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def pred_index(letter: str, num_choices: int) -> int:
    options = OPTIONS[:num_choices]
    return options.index(letter) if letter in options else -1


@dataclass
class ScienceQAScore:
    accuracy: float
    correct: int
    count: int
    img_accuracy: float
    img_correct: int
    img_count: int
    num_missing: int
    num_failed: int
    subsets: dict[str, float]
    analyses: dict[str, list[dict]] = field(repr=False)  # upstream's "--output-file" content
    result: dict[str, Any] = field(repr=False)  # upstream's "--output-result" content

    def metrics(self) -> dict[str, Any]:
        return {
            "img_accuracy": self.img_accuracy, "accuracy": self.accuracy,
            "correct": self.correct, "count": self.count,
            "img_correct": self.img_correct, "img_count": self.img_count,
            "num_missing": self.num_missing, "num_failed_parse": self.num_failed,
            "subsets": self.subsets,
        }


def score_science_qa(problems: Mapping[str, Mapping], split_ids: Sequence[str],
                     answers: Sequence[Mapping]) -> ScienceQAScore:
    check_unique_ids(answers, "ScienceQA answers")  # upstream lets the last one win
    predictions = {qid_key(a["question_id"]): a for a in answers}
    correct_list: list[dict] = []
    incorrect_list: list[dict] = []
    result: dict[str, Any] = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    missing = failed = 0
    subset_hits = {k: [0, 0] for k in SUBSETS}
    for pid in split_ids:
        pid = qid_key(pid)
        if pid not in problems:
            raise ScorerInputError(f"problem {pid} of the split is not in problems.json")
        prob = problems[pid]
        if pid in predictions:
            pred = predictions[pid]
            prompt, text = str(pred.get("prompt", "")), pred["text"]
        else:
            missing += 1
            prompt, text = "Unknown", FAILED
        letter = parse_letter(text)
        failed += letter == FAILED
        idx = pred_index(letter, len(prob["choices"]))
        ok = idx == prob["answer"]
        analysis = {
            "question_id": pid, "parsed_ans": letter, "ground_truth": OPTIONS[prob["answer"]],
            "question": prompt, "pred": text, "is_multimodal": "<image>" in prompt,
        }
        result["results"][pid] = idx
        result["outputs"][pid] = text
        (correct_list if ok else incorrect_list).append(analysis)
        for name, member in SUBSETS.items():
            if member(prob):
                subset_hits[name][0] += ok
                subset_hits[name][1] += 1
    correct = len(correct_list)
    total = correct + len(incorrect_list)
    img_correct = sum(a["is_multimodal"] for a in correct_list)
    img_total = img_correct + sum(a["is_multimodal"] for a in incorrect_list)
    result.update(acc=pct(correct, total), correct=correct, count=total)
    return ScienceQAScore(
        accuracy=pct(correct, total), correct=correct, count=total,
        img_accuracy=pct(img_correct, img_total), img_correct=img_correct, img_count=img_total,
        num_missing=missing, num_failed=failed,
        subsets={k: pct(c, n) for k, (c, n) in subset_hits.items() if n},
        analyses={"correct": correct_list, "incorrect": incorrect_list}, result=result,
    )


def load_science_qa(base_dir: str | Path, split: str = "test") -> tuple[dict, list[str]]:
    """``problems.json`` and the split's pid list from ``pid_splits.json`` under ``base_dir``."""
    base_dir = Path(base_dir)
    splits = read_json(base_dir / "pid_splits.json", "ScienceQA pid_splits.json")
    problems = read_json(base_dir / "problems.json", "ScienceQA problems.json")
    if not isinstance(splits, dict) or split not in splits:
        raise ScorerInputError(f"{base_dir / 'pid_splits.json'} has no split '{split}'")
    if not isinstance(problems, dict):
        raise ScorerInputError(f"{base_dir / 'problems.json'} is not a JSON object keyed by pid")
    for pid in splits[split]:
        prob = problems.get(qid_key(pid))
        if isinstance(prob, dict) and not ("choices" in prob and "answer" in prob):
            raise ScorerInputError(f"problems.json entry {pid} lacks 'choices' or 'answer'")
    return problems, [qid_key(p) for p in splits[split]]
