"""Model-agnostic visual token compression: configs, registry, scoring, selection, merging."""

from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    ModelGeometry,
    Stage,
    available_methods,
    get_method,
    make_config,
)

__all__ = [
    "CompressionConfigError",
    "MethodConfig",
    "ModelGeometry",
    "Stage",
    "available_methods",
    "get_method",
    "make_config",
]
