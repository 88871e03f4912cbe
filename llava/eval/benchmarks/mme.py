"""MME: LLaVA's ``convert_answer_to_mme.py`` followed by the official ``eval_tool/calculation.py``.

Conversion (evaluation.md §2.7), reproduced exactly:

* subtask = first component of ``question_id`` (= the image path); the ground-truth file is the
  basename up to its first ``.`` plus ``.txt``.
* the MME question is rebuilt from the stored prompt: delete the LLaVA suffix
  ``Answer the question using a single word or phrase.``, strip, and (when the prompt does not
  already contain ``Please answer yes or no.``) append `` Please answer yes or no.``; if that key is not
  in the ground truth, use the two-space variant ``  Please answer yes or no.``.
* ground truth: ``MME_Benchmark_release_version/<subtask>/questions_answers_YN/*.txt`` for subtasks
  with an ``images/`` folder, else ``<subtask>/*.txt``; each line ``question<TAB>Yes|No`` (stripped).
* per subtask, lines ``file<TAB>question<TAB>gt<TAB>prediction`` in answer-file order (here: the
  answers of one image kept together, see the deviations).

Calculation, reproduced exactly:

* a subtask's lines are read in **consecutive pairs** (one image, two questions);
* gt and prediction are lower-cased; the prediction still carries the line's newline, so it is
  ``yes``/``no`` only by the prefix rule: ``pred[:4]`` containing ``yes`` -> yes, else containing
  ``no`` -> no, else other (always wrong);
* acc = fraction of questions right; acc+ = fraction of images with both right;
  subtask score = 100 * acc + 100 * acc+;
* Perception = sum over the 10 perception subtasks, Cognition = sum over the 4 cognition subtasks.

Deviations: a subtask with no answers scores 0 and is listed in ``missing_subtasks`` (upstream
crashes); an odd number of answers in a subtask is an error (upstream's assert). Upstream pairs a
subtask's lines by position, so an answers file out of question order (a resumed or merged run) pairs
questions of different images; here a subtask's rows are grouped by image (``question_id``, in order of
first appearance, answer order within an image), which changes nothing for a file in question order. An
image with an odd number of answers, or the same question answered twice, is an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import SHORT_ANSWER_SUFFIX, ScorerInputError, safe_div

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_NO = "Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], str]


def load_ground_truth(root: str | Path) -> GroundTruth:
    """``{(subtask, txt file name, question): "Yes"|"No"}`` from an MME_Benchmark_release_version folder."""
    root = Path(root)
    if not root.is_dir():
        raise ScorerInputError(f"MME benchmark folder not found: {root}")
    gt: GroundTruth = {}
    for cat_dir in sorted(root.iterdir()):
        if not cat_dir.is_dir():
            continue
        qa_dir = cat_dir / "questions_answers_YN" if (cat_dir / "images").exists() else cat_dir
        if not qa_dir.is_dir():
            raise ScorerInputError(f"MME subtask {cat_dir.name} has images/ but no questions_answers_YN/")
        for txt in sorted(qa_dir.glob("*.txt")):
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise ScorerInputError(f"MME ground truth {txt} line {lineno} is not 'question<TAB>answer'")
                gt[(cat_dir.name, txt.name, parts[0])] = parts[1]
    if not gt:
        raise ScorerInputError(f"no MME ground-truth .txt files under {root}")
    return gt


def mme_question(prompt: str) -> tuple[str, str]:
    """The two candidate ground-truth keys for a stored prompt: (one-space form, two-space form)."""
    if SHORT_ANSWER_SUFFIX in prompt:
        prompt = prompt.replace(SHORT_ANSWER_SUFFIX, "").strip()
    if YES_NO in prompt:
        return prompt, prompt
    one = prompt + " " + YES_NO
    return one, one.replace(" " + YES_NO, "  " + YES_NO)


def convert_answers(answers: Sequence[Mapping], gt: GroundTruth) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per subtask, the (file, question, gt, prediction) rows that ``calculation.py`` reads, the two rows of
    an image next to each other."""
    by_image: dict[str, dict[str, list[tuple[str, str, str, str]]]] = defaultdict(dict)
    seen: set[tuple[str, str, str]] = set()
    for a in answers:
        qid = str(a["question_id"])
        category = qid.split("/")[0]
        file = qid.split("/")[-1].split(".")[0] + ".txt"
        one, two = mme_question(str(a.get("prompt", "")))
        question = one if (category, file, one) in gt else two
        if (category, file, question) not in gt:
            raise ScorerInputError(f"no MME ground truth for {qid!r} and question {one!r}")
        if (category, file, question) in seen:
            raise ScorerInputError(f"MME question {question!r} of {qid!r} is answered twice; keep one answer per "
                                   "question (delete the repeats, or rerun with --overwrite)")
        seen.add((category, file, question))
        by_image[category].setdefault(qid, []).append((file, question, gt[(category, file, question)], a["text"]))
    rows: dict[str, list[tuple[str, str, str, str]]] = {}
    for category, images in by_image.items():
        for qid, image_rows in images.items():
            if len(image_rows) % 2:
                raise ScorerInputError(f"MME image {qid!r} has {len(image_rows)} answer(s); its questions are "
                                       "scored in pairs (answer both)")
        rows[category] = [row for image_rows in images.values() for row in image_rows]
    return rows


def parse_prediction(pred: str) -> str:
    """``calculation.py``'s parse of a lower-cased prediction line (newline included)."""
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def subtask_metrics(rows: Sequence[tuple[str, str, str, str]], name: str = "") -> dict[str, Any]:
    if len(rows) % 2:
        raise ScorerInputError(f"MME subtask {name} has {len(rows)} answers; they must come in pairs per image")
    correct = plus = other = 0
    for i in range(0, len(rows), 2):
        both = 0
        for _file, _q, gt_ans, pred in rows[i:i + 2]:
            gt_ans = gt_ans.lower()
            if gt_ans not in ("yes", "no"):
                raise ScorerInputError(f"MME ground truth for {name}/{_file} is {gt_ans!r}, not yes/no")
            label = parse_prediction((pred + "\n").lower())  # the line read back keeps its newline
            other += label == "other"
            if label == gt_ans:
                both += 1
        correct += both
        plus += both == 2
    images = len(rows) // 2
    acc = safe_div(correct, len(rows))
    acc_plus = safe_div(plus, images)
    return {"score": 100 * acc + 100 * acc_plus, "acc": 100 * acc, "acc_plus": 100 * acc_plus,
            "num_questions": len(rows), "num_images": images, "other_num": other}


def score_mme(rows_by_subtask: Mapping[str, Sequence[tuple[str, str, str, str]]]) -> dict[str, Any]:
    subtasks: dict[str, Any] = {}
    missing = []
    totals = {}
    for group, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        total = 0.0
        for name in names:
            if name not in rows_by_subtask or not rows_by_subtask[name]:
                missing.append(name)
                continue
            subtasks[name] = subtask_metrics(rows_by_subtask[name], name)
            total += subtasks[name]["score"]
        totals[group] = total
    unknown = sorted(set(rows_by_subtask) - set(PERCEPTION) - set(COGNITION))
    return {"perception": totals["perception"], "cognition": totals["cognition"],
            "total": totals["perception"] + totals["cognition"], "subtasks": subtasks,
            "missing_subtasks": missing, "unknown_subtasks": unknown}


def write_eval_tool_files(rows_by_subtask: Mapping[str, Sequence[tuple[str, str, str, str]]],
                          out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<subtask>.txt`` exactly as ``convert_answer_to_mme.py`` does (official tool input)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for category, rows in rows_by_subtask.items():
        path = out_dir / f"{category}.txt"
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write("\t".join(row) + "\n")
        written.append(path)
    return written
