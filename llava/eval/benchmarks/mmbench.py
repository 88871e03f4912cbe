"""MMBench / MMBench-CN (dev): the OpenCompass upload file, and a local accuracy with circular evaluation.

Upload (LLaVA's ``convert_mmbench_for_submission``): the tsv without the ``hint, category, source,
image, comment, l2-category`` columns, with a ``prediction`` column inserted at position 6 holding the
raw answer text matched by ``index``, written as ``.xlsx``. With ``--all-rounds`` an index has one answer
per round and the upload keeps the last round's, as upstream; the same (index, round) answered twice is
an error.

Local accuracy (not part of LLaVA; the official number comes from the server):

* Options of a row are ``A``, ``B``, ... up to the first missing value (empty, ``nan``, ``none``).
* Each answer is one *attempt*. With LLaVA's ``--all-rounds`` the options are rotated once per round;
  the answer's ``options`` are the options as displayed (under letters A, B, ...) and ``option_char``
  the original letter of each displayed option, so a displayed letter maps back through
  ``option_char``. Answers without these fields are read against the tsv's own options.
* The predicted letter is matched deterministically (:func:`match_option`, like VLMEvalKit's
  exact-matching stage, no GPT fallback): the one candidate letter that appears as a token after
  punctuation is turned into spaces; else the one option whose text occurs in the answer; else none.
* Circular evaluation: attempts are grouped by ``index % 1_000_000`` (the tsv's circular copies share
  it) and by question; a group is right only if every attempt in it is right.
  ``circular_accuracy`` (headline) is over groups, ``single_accuracy`` over attempts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import ScorerInputError, check_unique_ids, pct, qid_key
from .xlsx import write_xlsx

ALL_OPTIONS = ("A", "B", "C", "D")
UPLOAD_DROP = ("hint", "category", "source", "image", "comment", "l2-category")
CIRCULAR_OFFSET = 1_000_000
_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")


def is_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def row_options(row: Mapping[str, Any]) -> list[str]:
    """The option texts of a tsv row, stopping at the first missing one."""
    options = []
    for letter in ALL_OPTIONS:
        value = row.get(letter)
        if is_none(value):
            break
        options.append(str(value))
    return options


def match_option(text: str, candidates: Mapping[str, str]) -> str | None:
    """The displayed option letter an answer names, or ``None`` (``candidates``: letter -> option text)."""
    tokens = _PUNCT.sub(" ", text).split()
    named = [letter for letter in candidates if letter in tokens]
    if len(named) == 1:
        return named[0]
    if not named:
        lowered = text.lower()
        hits = [letter for letter, option in candidates.items() if option and option.lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None


def answer_round(answer: Mapping) -> tuple[str, int]:
    """An MMBench answer's identity: its index and its round (``--all-rounds``; 0 otherwise)."""
    round_id = answer.get("round_id") or 0
    if not isinstance(round_id, int) or isinstance(round_id, bool):
        raise ScorerInputError(f"MMBench answer {answer['question_id']!r} has round_id {round_id!r}, not an integer")
    return qid_key(answer["question_id"]), round_id


def group_key(index: Any) -> str:
    try:
        return str(int(index) % CIRCULAR_OFFSET)
    except (TypeError, ValueError):
        return qid_key(index)


def score_mmbench(answers: Sequence[Mapping], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Local accuracy, or ``None`` when the tsv has no ``answer`` column (test split)."""
    check_unique_ids(answers, "MMBench answers", key=answer_round)
    if not rows or "answer" not in rows[0]:
        return None
    by_index = {qid_key(r["index"]): r for r in rows}
    groups: dict[str, list[int]] = defaultdict(list)
    group_category: dict[str, str] = {}
    unparsed = 0
    for i, a in enumerate(answers, 1):
        row = by_index.get(qid_key(a["question_id"]))
        if row is None:
            raise ScorerInputError(f"answer {i}: index {a['question_id']!r} is not in the MMBench tsv")
        options = a.get("options") or row_options(row)
        option_char = a.get("option_char") or list(ALL_OPTIONS[:len(options)])
        if len(option_char) != len(options):
            raise ScorerInputError(f"answer {i}: 'options' and 'option_char' differ in length")
        displayed = dict(zip(ALL_OPTIONS, options))
        letter = match_option(a["text"], displayed)
        unparsed += letter is None
        original = option_char[ALL_OPTIONS.index(letter)] if letter is not None else None
        key = group_key(a["question_id"])
        groups[key].append(int(original is not None and original == str(row["answer"]).strip()))
        group_category.setdefault(key, str(by_index.get(key, row).get("category", "")))
    attempts = [ok for g in groups.values() for ok in g]
    circular = {k: int(all(v)) for k, v in groups.items()}
    per_cat: dict[str, list[int]] = defaultdict(list)
    for k, ok in circular.items():
        per_cat[group_category[k]].append(ok)
    main_keys = {group_key(r["index"]) for r in rows}
    return {
        "circular_accuracy": pct(sum(circular.values()), len(circular)),
        "single_accuracy": pct(sum(attempts), len(attempts)),
        "num_groups": len(circular), "num_attempts": len(attempts), "num_unparsed": unparsed,
        "num_questions_unanswered": len(main_keys - set(groups)),
        "per_category": {c: pct(sum(v), len(v)) for c, v in sorted(per_cat.items()) if c},
    }


def upload_table(header: Sequence[str], rows: Sequence[Mapping[str, Any]],
                 answers: Sequence[Mapping]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the upload sheet."""
    kept = [c for c in header if c not in UPLOAD_DROP]
    out_header = kept[:6] + ["prediction"] + kept[6:]
    check_unique_ids(answers, "MMBench answers", key=answer_round)
    prediction: dict[str, str] = {}
    for a in answers:
        prediction[qid_key(a["question_id"])] = a["text"]
    out_rows = []
    for r in rows:
        values: list[Any] = []
        for c in kept:
            v = r.get(c)
            if c == "index":
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    pass
            values.append(None if v == "" else v)
        values.insert(6, prediction.get(qid_key(r.get("index"))))
        out_rows.append(values)
    return out_header, out_rows


def write_upload(path: str | Path, header: Sequence[str], rows: Sequence[Mapping[str, Any]],
                 answers: Sequence[Mapping]) -> Path:
    h, r = upload_table(header, rows, answers)
    return write_xlsx(path, h, r)
