"""Question files of the LLaVA-1.5 evaluations -> :class:`EvalItem` lists; chunking across GPUs.

Three formats (evaluation.md section 1.2):

* ``jsonl`` (``model_vqa_loader``, ``model_vqa``): one JSON object per line with ``question_id``,
  ``image`` (relative to ``--image-folder``) and ``text`` (the full user text, suffix included).
* ``science`` (``model_vqa_science``): a JSON list of ``{"id", "conversations": [{"value": ...}], "image"?}``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


class QuestionFileError(ValueError):
    """A missing or malformed question file; the message names the file, the line and the fix."""


@dataclass
class EvalItem:
    """One question, ready for the prompt builder.

    question_id: copied to the answer.
    message: the user turn as the model sees it (``<image>\\n`` prefix included when there is an image).
    prompt: the answer file's ``prompt`` field (as the original scripts write it).
    image_path: absolute or relative image path, or ``None`` for a text-only question.
    convert_rgb: ``False`` reproduces ScienceQA's original loader, which skips ``.convert('RGB')``.
    extra: additional answer fields (e.g. MMBench's ``round_id``, ``options``, ``option_char``).
    image_b64: an inline base64 image (MMBench's tsv) instead of ``image_path``.
    """

    question_id: Any
    message: str
    prompt: str
    image_path: str | None
    convert_rgb: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    image_b64: str | None = None
    occurrence: int = 0

    @property
    def key(self) -> str:
        """The resume key: the question id (plus the round for MMBench's circular rounds), and the
        occurrence number when an id repeats (MME asks two questions per image under one id)."""
        return with_occurrence(answer_key({"question_id": self.question_id, **self.extra}), self.occurrence)

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_b64 is not None


def with_occurrence(key: str, occurrence: int) -> str:
    return key if occurrence == 0 else f"{key}#{occurrence}"


def number_occurrences(items: list[EvalItem]) -> list[EvalItem]:
    """Set each item's ``occurrence`` (0 for the first item with its id, 1 for the next, ...) in list order.
    Answers are appended in the same order, so the n-th answer with an id answers the n-th question."""
    seen: dict[str, int] = {}
    for item in items:
        item.occurrence = 0
        base = item.key
        item.occurrence = seen.get(base, 0)
        seen[base] = item.occurrence + 1
    return items


def answer_key(record: dict[str, Any]) -> str:
    """Identifies one answer: ``question_id`` (and ``round_id`` when the record has one)."""
    if "round_id" in record:
        return json.dumps([record.get("question_id"), record["round_id"]])
    return json.dumps(record.get("question_id"))


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise QuestionFileError(f"question file not found: {path} (check --question-file)")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise QuestionFileError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise QuestionFileError(f"{path}, line {lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    return records


def _require(rec: dict, keys: tuple[str, ...], path: str, where: str) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise QuestionFileError(f"{path}, {where}: missing field(s) {missing}; found {sorted(rec)}")


def load_vqa_items(path: str, image_folder: str) -> list[EvalItem]:
    """``model_vqa_loader`` / ``model_vqa`` question files (JSON lines)."""
    items = []
    for i, rec in enumerate(read_jsonl(path), 1):
        _require(rec, ("question_id", "text"), path, f"record {i}")
        image = rec.get("image")
        text = rec["text"]
        items.append(
            EvalItem(
                question_id=rec["question_id"],
                message=(DEFAULT_IMAGE_TOKEN + "\n" + text) if image else text,
                prompt=text,
                image_path=os.path.join(image_folder, image) if image else None,
            )
        )
    return items


def load_science_items(path: str, image_folder: str, single_pred_prompt: bool = False) -> list[EvalItem]:
    """ScienceQA ``llava_test_CQM-A.json`` (a JSON list), as ``model_vqa_science`` reads it."""
    if not os.path.isfile(path):
        raise QuestionFileError(f"question file not found: {path} (check --question-file)")
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except json.JSONDecodeError as err:
        raise QuestionFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(records, list):
        raise QuestionFileError(f"{path}: expected a JSON list of questions (llava_test_CQM-A.json format)")
    items = []
    for i, rec in enumerate(records):
        _require(rec, ("id", "conversations"), path, f"item {i}")
        try:
            question = rec["conversations"][0]["value"]
        except (IndexError, KeyError, TypeError):
            raise QuestionFileError(f"{path}, item {i}: 'conversations' must start with a {{'value': ...}} turn") from None
        qs = question.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        prompt = qs
        image = rec.get("image")
        if image:
            qs = DEFAULT_IMAGE_TOKEN + "\n" + qs
            prompt = DEFAULT_IMAGE_TOKEN + "\n" + prompt
        if single_pred_prompt:
            qs = qs + "\n" + SINGLE_PRED_PROMPT
            prompt = prompt + "\n" + SINGLE_PRED_PROMPT
        items.append(
            EvalItem(
                question_id=rec["id"],
                message=qs,
                prompt=prompt,
                image_path=os.path.join(image_folder, image) if image else None,
                convert_rgb=False,
            )
        )
    return items


def split_list(lst: list, n: int) -> list[list]:
    """Contiguous slices of size ``ceil(len/n)`` (LLaVA's chunking); always exactly ``n`` slices,
    the trailing ones empty when ``len(lst) < n`` (LLaVA raises IndexError there)."""
    size = max(1, math.ceil(len(lst) / n))
    return [lst[i * size : (i + 1) * size] for i in range(n)]


def get_chunk(lst: list, n: int, k: int) -> list:
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--chunk-idx must be in [0, --num-chunks) and --num-chunks >= 1; got {k} of {n}")
    return split_list(lst, n)[k]
