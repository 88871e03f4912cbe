"""What produced an answer: the settings every record of one answers file must share.

Each answer record carries them: ``model_id`` at the top level and, in ``metadata``, ``method``,
``method_args`` and ``run`` (conversation mode and decoding flags, see :func:`run_metadata`). Resuming an
answers file, merging chunk files and scoring all compare :func:`record_settings` so that answers made with
different settings never end up counted together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


class SettingsMismatchError(ValueError):
    """Answers made with different settings would be mixed; the message names the first difference."""


def run_metadata(conv_mode: str | None, max_new_tokens: int, temperature: float, top_p: float | None,
                 num_beams: int, seed: int) -> dict[str, Any]:
    """``metadata.run`` of a record: the conversation mode and the decoding flags. The seed counts only when
    decoding samples (``temperature > 0``); a random method records its own seed in ``method_args``."""
    run: dict[str, Any] = {"conv_mode": conv_mode, "max_new_tokens": max_new_tokens, "temperature": temperature,
                           "top_p": top_p, "num_beams": num_beams}
    if temperature > 0:
        run["seed"] = seed
    return run


def record_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The comparable settings of one answer record (``None`` where the record does not say)."""
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    return {
        "model_id": record.get("model_id"),
        "method": metadata.get("method"),
        "method_args": metadata.get("method_args"),
        "run": metadata.get("run"),
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: value}
    return {prefix: value}


def settings_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """One line naming what differs, e.g. ``method_args.fastv_k: 1 (recorded) vs 3``; ``""`` when equal."""
    a, b = _flatten(recorded), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {json.dumps(a.get(key, '<absent>'))} vs {json.dumps(b.get(key, '<absent>'))}")
    return "; ".join(diffs)


def check_same_settings(records: Iterable[dict[str, Any]], where: str) -> dict[str, Any] | None:
    """The settings shared by all ``records``; raises :class:`SettingsMismatchError` naming the first record
    that differs from the first one (and how). ``None`` for no records."""
    first: dict[str, Any] | None = None
    for i, rec in enumerate(records, 1):
        settings = record_settings(rec)
        if first is None:
            first = settings
            continue
        diff = settings_difference(first, settings)
        if diff:
            raise SettingsMismatchError(
                f"{where} mixes answers made with different settings (record {i}, question "
                f"{rec.get('question_id')!r}, differs from record 1: {diff}); keep one setting per file"
            )
    return first
