"""Model-agnostic visual token compression: configs, registry, scoring, selection, merging.

Entry points for evaluation code::

    import llava.compression as vtc
    vtc.apply(model, "fastervlm", visual_token_num=64)   # per instance; returns model
    out = model.generate(input_ids=..., attention_mask=..., pixel_values=..., max_new_tokens=8)
    vtc.last_trace(model)   # [{"visual_tokens": 64, "kept_indices": [...], "row": 0}, ...]
    vtc.remove(model)

``apply``/``remove``/``model_geometry``/``last_trace``/``applied_config``/``describe``/``prepare_multimodal_inputs``
dispatch to the model's family (``llava.compression.families``: LLaVA-1.5 built in, Video-LLaVA registered by
``videollava``), imported lazily so that the pure parts load without transformers.
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


def apply(model: Any, method: str | MethodConfig, **options: Any) -> Any:
    """Apply ``method`` (name + arguments, or a config) to this model instance; ``"none"`` removes any method.

    Dispatches on the model's family (:func:`llava.compression.families.family_for`): LLaVA-1.5, Video-LLaVA (its
    ``budget_mode`` / ``keep_cls`` options are keyword arguments here too) and any registered family. Validates the
    arguments against the family's geometry first (:class:`CompressionConfigError`). Returns ``model``.
    """
    from llava.compression.families import NoFamilyError, family_for

    try:
        family = family_for(model)
    except NoFamilyError:
        if isinstance(method, str) and not get_method(method).stages:  # "none" on any model: nothing to remove
            make_config(method, None, **options)  # still rejects stray arguments
            return model
        raise
    return family.apply(model, method, **options)


def remove(model: Any) -> Any:
    """Restore the unmodified model (no-op when nothing was applied). Returns ``model``."""
    family = _family_or_none(model)
    return model if family is None else family.remove(model)


def model_geometry(model: Any) -> ModelGeometry:
    """Patch count, grid, [CLS], encoder / LLM layer counts and feature layer of one visual unit of ``model``."""
    from llava.compression.families import family_for

    return family_for(model).geometry(model)


def last_trace(model: Any) -> list[dict[str, Any]] | None:
    """Per-unit traces of the last visual encoding of ``model`` (``None`` when no method is applied)."""
    family = _family_or_none(model)
    return None if family is None else family.last_trace(model)


def applied_config(model: Any) -> MethodConfig:
    """The method config currently applied to ``model`` (the ``none`` config when nothing is)."""
    family = _family_or_none(model)
    return make_config("none") if family is None else family.applied_config(model)


def describe(model: Any) -> dict[str, Any]:
    """``{"family", "method", "method_args", ...}`` of what is applied to ``model`` (family options included)."""
    from llava.compression.families import family_for

    return family_for(model).describe(model)


def prepare_multimodal_inputs(
    model: Any, input_ids: Any, attention_mask: Any, pixel_values: Any, **kwargs: Any
):
    """Encode images with the applied method and shrink the placeholder runs (for ``forward``); see the family."""
    from llava.compression.families import family_for

    return family_for(model).prepare_multimodal_inputs(model, input_ids, attention_mask, pixel_values, **kwargs)


def _family_or_none(model: Any):
    from llava.compression.families import NoFamilyError, family_for

    try:
        return family_for(model)
    except NoFamilyError:
        return None


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
    "describe",
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
