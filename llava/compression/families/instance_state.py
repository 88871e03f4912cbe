"""The per-instance state a family keeps on one model while a vision-side method is applied, and its undoing.

A family's ``apply`` wraps a few methods of one model instance (``get_image_features``, ``generate``) and stores, in
the instance ``__dict__`` of the inner model under the family's own attribute name, a state object with at least
``config`` (the applied method), ``saved`` (``{method name: (owner, previous instance attribute or None)}``) and
``last_trace``. These functions are the other half, shared by the image families (``llava``, ``llava_next``,
``qwen2_5_vl``): find the state, restore what was wrapped, and answer ``applied_config`` / ``last_trace`` with the
in-LLM engine's (``decoder_pruning``) as the fallback. Nothing is patched on a class.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from llava.compression.registry import MethodConfig, NoCompression


def state_of(model: Any, attr: str) -> Any | None:
    """The state stored under ``attr`` on ``model``'s inner model (``model.model``), or ``None``."""
    base = getattr(model, "model", model)
    return base.__dict__.get(attr) if isinstance(base, torch.nn.Module) else None


def install(model: Any, attr: str, make_state: Callable[[dict], Any], get_image_features: Callable,
            generate: Callable) -> Any:
    """Wrap this instance's ``model.model.get_image_features`` and ``model.generate`` and store
    ``make_state(saved)`` under ``attr`` (``saved``: what :func:`remove` restores); returns ``model``."""
    base = model.model
    saved = {
        "get_image_features": (base, base.__dict__.get("get_image_features")),
        "generate": (model, model.__dict__.get("generate")),
    }
    base.__dict__[attr] = make_state(saved)
    base.get_image_features = types.MethodType(get_image_features, base)
    model.generate = types.MethodType(generate, model)
    return model


def remove(model: Any, attr: str) -> Any:
    """Undo the in-LLM engine and the vision-side wrapping stored under ``attr`` (no-op when nothing is applied);
    returns ``model``."""
    from llava.compression.families import decoder_pruning

    decoder_pruning.remove(model)
    state = state_of(model, attr)
    if state is None:
        return model
    for name, (owner, previous) in state.saved.items():
        owner.__dict__.pop(name, None)
        if previous is not None:
            owner.__dict__[name] = previous
    del model.model.__dict__[attr]
    return model


def applied_config(model: Any, attr: str) -> MethodConfig:
    """The vision-side config stored under ``attr`` first (a multi-stage method's LLM stage is a sub-config of
    it), else the in-LLM engine's, else ``NoCompression``."""
    from llava.compression.families import decoder_pruning

    state = state_of(model, attr)
    if state is not None:
        return state.config
    llm_config = decoder_pruning.applied_config(model)
    return NoCompression() if llm_config is None else llm_config


def last_trace(model: Any, attr: str) -> list[dict[str, Any]] | None:
    """The vision-side trace of the last call (per image) when a vision-side method is applied, else the in-LLM
    engine's (per batch row of the last prefill); ``None`` before any call or without a method."""
    from llava.compression.families import decoder_pruning

    state = state_of(model, attr)
    return decoder_pruning.last_trace(model) if state is None else state.last_trace
