"""Model-family integrations of the compression stages (one thin module per family).

An integration module provides ``supports(model)``, ``apply(model, method, **kwargs)``, ``remove(model)``,
``model_geometry(model)``, ``last_trace(model)`` and ``applied_config(model)``. Integrations import
transformers, never ``llava.model`` or ``llava.eval``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

_FAMILIES = ("llava.compression.families.llava",)


def integration_for(model: Any) -> ModuleType:
    """The integration module that handles ``model``; ``TypeError`` when there is none."""
    for name in _FAMILIES:
        module = importlib.import_module(name)
        if module.supports(model):
            return module
    raise TypeError(f"no compression integration for {type(model).__name__}")
