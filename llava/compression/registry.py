"""Method registry: a method name -> its config dataclass and the stage(s) where it acts.

A method is a :class:`MethodConfig` subclass (validated fields, one CLI flag per field) plus the
stage functions it needs. The registry knows nothing about models; integration layers (one per model
family, under ``llava/model/``) look a method up here and call its stage functions.

Stages (see ``../shared/ARCHITECTURE.md``):

* ``Stage.VISION_ENCODER`` - between vision-encoder layers (ToMe, FiCoCo-V).
* ``Stage.PRE_LLM``        - between the vision features and the projector (FasterVLM, VTC-CLS, ...).
* ``Stage.LLM``            - between decoder layers of the language model (FastV, PyramidDrop, ...).

CLI flags: each config field may carry ``metadata={"flag": "--visual-token-num", "help": ...}``.
Several methods may share a flag (same field name, same type); :func:`add_method_arguments` adds each
flag once with default ``None`` so that a method's own default applies when the flag is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class CompressionConfigError(ValueError):
    """An invalid method name or method argument. Raised before any model work starts."""


class Stage(StrEnum):
    VISION_ENCODER = "vision_encoder"
    PRE_LLM = "pre_llm"
    LLM = "llm"


@dataclass(frozen=True)
class ModelGeometry:
    """What a config needs to know about a model to validate itself.

    num_patches: visual tokens one image gives the LLM without compression (576 for LLaVA-1.5).
    grid: (rows, cols) of the patch grid (24, 24 for CLIP-L/336).
    vision_layers: number of vision-encoder layers (24 for CLIP-L).
    llm_layers: number of decoder layers of the language model (32 for 7B).
    vision_feature_layer: the vision layer whose hidden states feed the projector (-2).
    has_cls: whether the vision encoder gives a [CLS] token (CLIP towers do; Qwen2.5-VL's does not). Methods whose
        :attr:`MethodSpec.requires` holds ``"cls"`` are refused when it is ``False``.
    family: name of the model family this geometry was read from (``""`` when not from a model); named in errors.
    """

    num_patches: int = 576
    grid: tuple[int, int] = (24, 24)
    vision_layers: int = 24
    llm_layers: int = 32
    vision_feature_layer: int = -2
    has_cls: bool = True
    family: str = ""

    def provides(self) -> frozenset[str]:
        """The capabilities a method may require (:data:`REQUIREMENTS`) that this geometry's model supplies."""
        return frozenset({"cls"} if self.has_cls else ())

    @property
    def feature_layer(self) -> int:
        """0-based index of the vision-encoder layer whose *output* feeds the projector.

        ``hidden_states`` has ``vision_layers + 1`` entries (index 0 = encoder input), so
        ``hidden_states[vision_feature_layer]`` is the output of layer ``(vision_feature_layer mod (L+1)) - 1``:
        22 for CLIP-L with ``-2``. It is -1 when the features are the encoder input (no attention layer).
        """
        return self.vision_feature_layer % (self.vision_layers + 1) - 1


def option(default: Any, flag: str, help: str, *, type: Any = None, choices: Any = None) -> Any:
    """A config field with its CLI flag: ``x: int = option(64, "--visual-token-num", "...")``.

    ``type`` is the argparse type (needed when the annotation is ``int | None``); ``choices`` is passed to argparse.
    """
    metadata: dict[str, Any] = {"flag": flag, "help": help}
    if type is not None:
        metadata["type"] = type
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class MethodConfig:
    """Base class of every method config. Subclasses are dataclasses with validated fields."""

    name: ClassVar[str] = "none"

    def validate(self, geometry: ModelGeometry) -> None:
        """Raise :class:`CompressionConfigError` when an argument cannot work on ``geometry``."""

    def to_dict(self) -> dict[str, Any]:
        """The method's arguments, JSON-serialisable (recorded in every answer's metadata)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class NoCompression(MethodConfig):
    """The unmodified model."""

    name: ClassVar[str] = "none"


# What a method may require of a model family (``MethodSpec.requires``), with the words an error uses for it.
REQUIREMENTS = {"cls": "a [CLS] token in the vision encoder"}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, config class, stage(s), one-line summary, aliases and requirements.

    requires: capabilities the method needs from the model family (keys of :data:`REQUIREMENTS`, e.g. ``"cls"``
        for methods that score patches by the [CLS] token's attention).
    """

    name: str
    config_cls: type[MethodConfig]
    stages: tuple[Stage, ...]
    summary: str
    aliases: tuple[str, ...] = field(default_factory=tuple)
    requires: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.requires) - set(REQUIREMENTS))
        if unknown:
            raise ValueError(f"method {self.name!r} requires unknown capabilities {unknown}; known: {sorted(REQUIREMENTS)}")
        object.__setattr__(self, "requires", frozenset(self.requires))


def check_requirements(spec: MethodSpec, geometry: ModelGeometry) -> None:
    """Refuse ``spec`` on a model whose geometry lacks something the method requires (one clear error)."""
    missing = sorted(spec.requires - geometry.provides())
    if missing:
        family = geometry.family or "this model"
        needs = ", ".join(REQUIREMENTS[m] for m in missing)
        raise CompressionConfigError(
            f"method {spec.name!r} needs {needs} (requires {missing}), which the model family {family!r} does not "
            "have; choose a method without that requirement (python -m llava.compression.families lists them)"
        )


# Flags that the evaluation entry points own (``--seed`` seeds sampling and every random draw). A method
# field with one of these flags reads the entry point's value; setting it never counts as a foreign flag.
SHARED_FLAGS = frozenset({"--seed"})

# Flags that give a number of visual tokens to keep. Zero (or less) is refused for every method: "drop every
# visual token" is not a compression setting any upstream code defines (run the model without the image instead).
BUDGET_FLAGS = frozenset({"--visual-token-num", "--ficoco-vision-token-num"})

_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method at import time of its module. Names are case-insensitive."""
    key = spec.name.lower()
    if key in _METHODS or key in _ALIASES:
        raise RuntimeError(f"compression method {spec.name!r} registered twice")
    _METHODS[key] = spec
    for alias in spec.aliases:
        _ALIASES[alias.lower()] = key
    return spec


register(MethodSpec("none", NoCompression, (), "unmodified model (all visual tokens)", aliases=("baseline",)))


def available_methods() -> list[str]:
    """Registered method names (aliases excluded), sorted."""
    _load_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """Look a method up by name or alias; unknown names raise a clear error listing the choices."""
    _load_builtin_methods()
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise CompressionConfigError(
            f"unknown compression method {name!r}; choose one of: {', '.join(available_methods())} "
            "(or 'baseline' for the unmodified model)"
        )
    return _METHODS[key]


def make_config(name: str, geometry: ModelGeometry | None = None, **kwargs: Any) -> MethodConfig:
    """Build and validate a method config from keyword arguments (``None`` values mean "default").

    Unknown keyword arguments raise :class:`CompressionConfigError` naming the method's valid ones.
    """
    spec = get_method(name)
    valid = {f.name for f in dataclasses.fields(spec.config_cls)}
    given = {k.replace("-", "_"): v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(given) - valid)
    if unknown:
        raise CompressionConfigError(
            f"method {spec.name!r} takes no argument(s) {unknown}; its arguments are {sorted(valid) or 'none'}"
        )
    if geometry is not None:
        check_requirements(spec, geometry)
    check_budget_flags(spec, given)
    try:
        config = spec.config_cls(**given)
    except (TypeError, ValueError) as err:
        raise CompressionConfigError(f"method {spec.name!r}: {err}") from None
    config.validate(geometry or ModelGeometry())
    return config


def check_budget_flags(spec: MethodSpec, values: dict[str, Any]) -> None:
    """Refuse a budget (a :data:`BUDGET_FLAGS` field) that is an integer ``<= 0``, whatever the method."""
    for f in dataclasses.fields(spec.config_cls):
        flag = f.metadata.get("flag")
        value = values.get(f.name)
        if flag not in BUDGET_FLAGS or isinstance(value, bool) or not isinstance(value, int):
            continue
        if value <= 0:
            raise CompressionConfigError(
                f"method {spec.name!r}: {flag} must be >= 1 (visual tokens kept), got {value}; a budget of 0 would "
                "drop every visual token (ask the question without the image instead)"
            )


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--method`` and every registered method's flags (each flag once, default ``None``)."""
    _load_builtin_methods()
    group = parser.add_argument_group("visual token compression")
    group.add_argument(
        "--method",
        default="none",
        help=f"compression method: {', '.join(available_methods())} (default: none = unmodified model)",
    )
    seen: dict[str, tuple[str, Any]] = {}
    for spec in _METHODS.values():
        for f in dataclasses.fields(spec.config_cls):
            flag = f.metadata.get("flag")
            if not flag:
                continue
            ftype = f.metadata.get("type", _field_type(f))
            if flag in SHARED_FLAGS and flag in parser._option_string_actions:
                continue  # the entry point already defines it (same dest as the field name)
            if flag in seen:
                if seen[flag] != (f.name, ftype):
                    raise RuntimeError(f"flag {flag} declared with different meanings by several methods")
                continue
            seen[flag] = (f.name, ftype)
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata.get("help")}
            if ftype is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = ftype
                if "choices" in f.metadata:
                    kwargs["choices"] = f.metadata["choices"]
            group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, geometry: ModelGeometry | None = None) -> MethodConfig:
    """The validated config of ``args.method`` built from the parsed CLI flags.

    Flags that belong to other methods are ignored unless set, in which case they raise (a flag the
    chosen method does not use is almost always a typo in a script).
    """
    spec = get_method(args.method)
    own = {f.name for f in dataclasses.fields(spec.config_cls)}
    values: dict[str, Any] = {}
    foreign: list[str] = []
    for other in _METHODS.values():
        for f in dataclasses.fields(other.config_cls):
            if not f.metadata.get("flag") or getattr(args, f.name, None) is None:
                continue
            if f.name in own:
                values[f.name] = getattr(args, f.name)
            elif f.metadata["flag"] not in SHARED_FLAGS:
                foreign.append(f.metadata["flag"])
    if foreign:
        raise CompressionConfigError(
            f"method {spec.name!r} does not use {', '.join(sorted(set(foreign)))}; "
            f"remove the flag(s) or choose a method that takes them"
        )
    return make_config(spec.name, geometry, **values)


def _field_type(f: dataclasses.Field) -> Any:
    t = (
        f.type
        if not isinstance(f.type, str)
        else {"int": int, "float": float, "str": str, "bool": bool}.get(f.type.split("|")[0].strip(), str)
    )
    return t


def _load_builtin_methods() -> None:
    """Import the modules that register the built-in methods (idempotent)."""
    from llava.compression import methods  # noqa: F401
