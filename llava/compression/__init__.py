"""Model-agnostic visual token compression: configs, registry, scoring, selection, merging.

Entry points for evaluation code::

    import llava.compression as vtc
    vtc.apply(model, "fastervlm", visual_token_num=64)   # per instance; returns model
    out = model.generate(input_ids=..., attention_mask=..., pixel_values=..., max_new_tokens=8)
    vtc.last_trace(model)   # [{"visual_tokens": 64, "kept_indices": [...], "row": 0}, ...]
    vtc.remove(model)

``apply``/``remove``/``model_geometry``/``last_trace``/``prepare_multimodal_inputs`` dispatch to the model family's
integration (``llava.compression.families``), imported lazily so that the pure parts load without transformers.
"""

from __future__ import annotations

from typing import Any

from llava.compression.placeholders import find_image_spans, restore_prompts, shrink_placeholder_runs
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    Stage,
    add_method_arguments,
    available_methods,
    config_from_args,
    get_method,
    make_config,
    register,
)


def apply(model: Any, method: str | MethodConfig, **method_kwargs: Any) -> Any:
    """Apply ``method`` (name + arguments, or a config) to this model instance; ``"none"`` removes any method.

    Validates the arguments against the model's geometry first (:class:`CompressionConfigError`). Returns ``model``.
    """
    from llava.compression.families import integration_for

    if isinstance(method, str) and get_method(method).config_cls is get_method("none").config_cls:
        make_config(method, None, **method_kwargs)  # still rejects stray arguments
        remove(model)
        return model
    return integration_for(model).apply(model, method, **method_kwargs)


def remove(model: Any) -> Any:
    """Restore the unmodified model (no-op when nothing was applied). Returns ``model``."""
    from llava.compression.families import integration_for

    try:
        integration = integration_for(model)
    except TypeError:
        return model
    return integration.remove(model)


def model_geometry(model: Any) -> ModelGeometry:
    """Patch count, grid, encoder / LLM layer counts and feature layer of ``model``, from its config."""
    from llava.compression.families import integration_for

    return integration_for(model).model_geometry(model)


def last_trace(model: Any) -> list[dict[str, Any]] | None:
    """Per-image traces of the last image encoding of ``model`` (``None`` when no method is applied)."""
    from llava.compression.families import integration_for

    try:
        integration = integration_for(model)
    except TypeError:
        return None
    return integration.last_trace(model)


def applied_config(model: Any) -> MethodConfig:
    """The method config currently applied to ``model`` (the ``none`` config when nothing is)."""
    from llava.compression.families import integration_for

    try:
        integration = integration_for(model)
    except TypeError:
        return make_config("none")
    return integration.applied_config(model)


def prepare_multimodal_inputs(
    model: Any, input_ids: Any, attention_mask: Any, pixel_values: Any, **kwargs: Any
):
    """Encode images with the applied method and shrink the placeholder runs (for ``forward``); see the integration."""
    from llava.compression.families import integration_for

    return integration_for(model).prepare_multimodal_inputs(
        model, input_ids, attention_mask, pixel_values, **kwargs
    )


__all__ = [
    "CompressionConfigError",
    "MethodConfig",
    "MethodSpec",
    "ModelGeometry",
    "Stage",
    "add_method_arguments",
    "applied_config",
    "apply",
    "available_methods",
    "config_from_args",
    "find_image_spans",
    "get_method",
    "last_trace",
    "make_config",
    "model_geometry",
    "prepare_multimodal_inputs",
    "register",
    "remove",
    "restore_prompts",
    "shrink_placeholder_runs",
]
