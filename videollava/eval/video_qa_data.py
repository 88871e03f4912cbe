"""Zero-shot video QA data (Video-ChatGPT "GPT_Zero_Shot_QA" layout) and FasterVLM's 1K subsets.

Layout under ``playground/data/eval/GPT_Zero_Shot_QA/`` (one folder per dataset)::

    MSVD_Zero_Shot_QA/        videos/<video_name>.avi        test_q.json test_a.json [test_q_1k.json test_a_1k.json]
    MSRVTT_Zero_Shot_QA/      videos/all/<video_name>.mp4    ...
    TGIF_Zero_Shot_QA/        mp4/<video_name>.mp4           ...
    Activitynet_Zero_Shot_QA/ all_test/v_<video_name>.<ext>  ...

* ``test_q*.json``: a JSON array of ``{"video_name", "question", "question_id"}``.
* ``test_a*.json``: a JSON array of ``{"answer", "type", "question_id"}``. Upstream pairs it with the
  question file by position (and gets it wrong once the questions are chunked); here the two are
  **joined by ``question_id``**, every question must have exactly one answer, and the result keeps the
  question-file order. Ids are compared as strings (``1`` and ``"1"`` are the same id).
* The ``1k`` subset is FasterVLM's ``test_{q,a}_1k.json`` (the first 1,000 items); ``full`` is
  ``test_{q,a}.json``. Never compare numbers across the two.

Video lookup: ``<video_dir>/<prefix><video_name><ext>`` for ``ext`` in ``.mp4, .avi, .mov, .mkv``,
first hit wins; ActivityNet uses the prefix ``v_``. A miss returns ``None``: upstream silently drops
such items, callers here should log and count them.

Malformed files raise :class:`VideoQADataError` naming the file and the offending item.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv")
DEFAULT_QA_ROOT = Path("playground/data/eval/GPT_Zero_Shot_QA")
SUBSETS = ("1k", "full")


class VideoQADataError(ValueError):
    """A question or answer file is missing or malformed."""


@dataclass(frozen=True)
class VideoQADataset:
    """Where one benchmark lives inside the GPT_Zero_Shot_QA root."""

    key: str
    dir_name: str
    video_subdir: str
    video_prefix: str = ""

    def root(self, qa_root: str | os.PathLike = DEFAULT_QA_ROOT) -> Path:
        return Path(qa_root) / self.dir_name

    def video_dir(self, qa_root: str | os.PathLike = DEFAULT_QA_ROOT) -> Path:
        return self.root(qa_root) / self.video_subdir

    def files(self, qa_root: str | os.PathLike = DEFAULT_QA_ROOT, subset: str = "1k") -> tuple[Path, Path]:
        """(question file, answer file) for ``subset`` ("1k" or "full")."""
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        suffix = "_1k" if subset == "1k" else ""
        root = self.root(qa_root)
        return root / f"test_q{suffix}.json", root / f"test_a{suffix}.json"


DATASETS: dict[str, VideoQADataset] = {
    "msvd": VideoQADataset("msvd", "MSVD_Zero_Shot_QA", "videos"),
    "msrvtt": VideoQADataset("msrvtt", "MSRVTT_Zero_Shot_QA", "videos/all"),
    "tgif": VideoQADataset("tgif", "TGIF_Zero_Shot_QA", "mp4"),
    "activitynet": VideoQADataset("activitynet", "Activitynet_Zero_Shot_QA", "all_test", video_prefix="v_"),
}


def get_dataset(name: str) -> VideoQADataset:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"anet": "activitynet", "activitynetqa": "activitynet", "msvdqa": "msvd", "msrvttqa": "msrvtt"}
    key = aliases.get(key, key)
    if key not in DATASETS:
        raise KeyError(f"unknown video QA dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[key]


@dataclass
class VideoQAItem:
    """One question joined with its ground-truth answer."""

    question_id: str | int
    video_name: str
    question: str
    answer: str
    answer_type: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _load_json_array(path: Path, kind: str) -> list[Any]:
    if not path.is_file():
        raise VideoQADataError(f"{kind} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise VideoQADataError(f"{kind} file {path} is not valid JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise VideoQADataError(f"cannot read {kind} file {path}: {e}") from e
    if not isinstance(data, list):
        raise VideoQADataError(f"{kind} file {path} must hold a JSON array, found {type(data).__name__}")
    return data


def _field(path: Path, index: int, record: Any, name: str, types: tuple[type, ...]) -> Any:
    if not isinstance(record, dict):
        raise VideoQADataError(f"{path}: item {index} is a {type(record).__name__}, expected an object")
    if name not in record:
        raise VideoQADataError(f"{path}: item {index} has no '{name}' field (keys: {sorted(record)})")
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise VideoQADataError(
            f"{path}: item {index} field '{name}' must be {'/'.join(t.__name__ for t in types)}, "
            f"found {type(value).__name__}"
        )
    return value


def load_qa_pairs(question_file: str | os.PathLike, answer_file: str | os.PathLike) -> list[VideoQAItem]:
    """Read a question file and an answer file and join them by ``question_id`` (question order kept)."""
    qpath, apath = Path(question_file), Path(answer_file)
    questions = _load_json_array(qpath, "question")
    answers = _load_json_array(apath, "answer")

    by_id: dict[str, tuple[int, dict]] = {}
    for i, record in enumerate(answers):
        qid = _field(apath, i, record, "question_id", (str, int))
        _field(apath, i, record, "answer", (str, int, float))
        key = str(qid)
        if key in by_id:
            raise VideoQADataError(
                f"{apath}: question_id {qid!r} appears twice (items {by_id[key][0]} and {i})"
            )
        by_id[key] = (i, record)

    items: list[VideoQAItem] = []
    seen: dict[str, int] = {}
    for i, record in enumerate(questions):
        qid = _field(qpath, i, record, "question_id", (str, int))
        video_name = _field(qpath, i, record, "video_name", (str, int))
        question = _field(qpath, i, record, "question", (str,))
        key = str(qid)
        if key in seen:
            raise VideoQADataError(f"{qpath}: question_id {qid!r} appears twice (items {seen[key]} and {i})")
        seen[key] = i
        if key not in by_id:
            raise VideoQADataError(f"{apath}: no answer for question_id {qid!r} (item {i} of {qpath})")
        answer_record = by_id[key][1]
        extra = {k: v for k, v in record.items() if k not in {"question_id", "video_name", "question"}}
        items.append(
            VideoQAItem(
                question_id=qid,
                video_name=str(video_name),
                question=question,
                answer=str(answer_record["answer"]),
                answer_type=answer_record.get("type"),
                extra=extra,
            )
        )
    unused = len(by_id) - len(items)
    if unused:
        extra_ids = [by_id[k][1]["question_id"] for k in by_id if k not in seen][:5]
        raise VideoQADataError(
            f"{apath}: {unused} answer(s) have no question in {qpath} (first ids: {extra_ids})"
        )
    return items


def load_dataset_split(
    dataset: str | VideoQADataset, qa_root: str | os.PathLike = DEFAULT_QA_ROOT, subset: str = "1k"
) -> list[VideoQAItem]:
    """Load ``subset`` ("1k" or "full") of a named dataset from the standard layout."""
    spec = dataset if isinstance(dataset, VideoQADataset) else get_dataset(dataset)
    qfile, afile = spec.files(qa_root, subset)
    return load_qa_pairs(qfile, afile)


def resolve_video_path(
    video_dir: str | os.PathLike,
    video_name: str,
    prefix: str = "",
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
) -> Path | None:
    """First existing ``<video_dir>/<prefix><video_name><ext>`` over ``extensions``, else ``None``."""
    base = Path(video_dir)
    for ext in extensions:
        candidate = base / f"{prefix}{video_name}{ext}"
        if candidate.is_file():
            return candidate
    return None
