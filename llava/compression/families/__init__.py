"""The model-family registry: one registered :class:`~llava.compression.families.contract.Family` per family.

* :func:`register_family` adds a family (at import time of its module);
* :func:`family_for` finds the family of a model instance: the registered families first (the built-in LLaVA-1.5
  family is imported on first use), then the families other packages declare in the ``vtc_toolkit.families``
  entry-point group (Video-LLaVA's ``videollava.model.family``), loaded only when no registered family supports
  the model. So ``llava`` never imports ``videollava``, and ``llava.compression.apply(video_model, ...)`` works
  whether or not the caller imported ``videollava`` first;
* :func:`available_families` lists them (``python -m llava.compression.families`` prints them with the methods
  that apply to each).

This module imports nothing heavy; family modules import transformers, never ``llava.model`` or ``llava.eval``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from llava.compression.families.contract import Family

ENTRY_POINT_GROUP = "vtc_toolkit.families"
BUILTIN_FAMILY_MODULES = (
    "llava.compression.families.llava",
    "llava.compression.families.llava_next",
    "llava.compression.families.qwen2_5_vl",
)

_FAMILIES: dict[str, Family] = {}


class NoFamilyError(TypeError):
    """No registered family supports the model (a ``TypeError``, as a wrong model type is)."""


def register_family(family: Family) -> Family:
    """Register ``family`` (an instance); registering the same name again replaces it (module re-imports)."""
    if not isinstance(family, Family) or not family.name:
        raise TypeError(f"register_family expects a named Family instance, got {family!r}")
    _FAMILIES[family.name] = family
    return family


def family_for(model: Any) -> Family:
    """The registered family that supports ``model``; :class:`NoFamilyError` when there is none."""
    _load_builtin_families()
    found = _first_supporting(model)
    if found is None:
        _load_entry_point_families()
        found = _first_supporting(model)
    if found is None:
        raise NoFamilyError(
            f"no compression family for {type(model).__name__} (registered: {', '.join(sorted(_FAMILIES))}); "
            f"a family registers itself with register_family() or the {ENTRY_POINT_GROUP!r} entry-point group"
        )
    return found


def available_families() -> list[str]:
    """Names of every family: the built-in ones, the registered ones and the entry-point ones, sorted."""
    _load_builtin_families()
    _load_entry_point_families()
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The registered family called ``name`` (after :func:`available_families` has loaded them all)."""
    if name not in _FAMILIES:
        available_families()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def integration_for(model: Any) -> Family:
    """Former name of :func:`family_for` (the family object has the old integration functions as methods)."""
    return family_for(model)


def _first_supporting(model: Any) -> Family | None:
    for family in _FAMILIES.values():
        if family.supports(model):
            return family
    return None


def _load_builtin_families() -> None:
    """Import the built-in family modules; each has its registered family as ``FAMILY`` (re-registered if the
    registry no longer holds it)."""
    for name in BUILTIN_FAMILY_MODULES:
        family = importlib.import_module(name).FAMILY
        if _FAMILIES.get(family.name) is not family:
            register_family(family)


def _load_entry_point_families() -> None:
    """Import every module of the entry-point group (each registers its family on import)."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if isinstance(loaded, Family):
            register_family(loaded)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Family",
    "NoFamilyError",
    "available_families",
    "family_for",
    "get_family",
    "integration_for",
    "register_family",
]
