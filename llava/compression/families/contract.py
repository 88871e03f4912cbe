"""The contract a model family implements so that every compression stage works on it.

A family is one registered object (:func:`llava.compression.families.register_family`) answering the questions
of the family table in ``ARCHITECTURE.md``:

==========================  ============================================================================
question                    method(s)
==========================  ============================================================================
which models                :meth:`Family.supports`
what one visual unit is     :meth:`Family.geometry` (the geometry methods validate against: grid, [CLS],
                            layer counts) and :meth:`Family.unit_geometries` (one per image / crop / frame)
what a method may ask for   :attr:`Family.stages`, :attr:`Family.provides`, :meth:`Family.refusal`;
                            :meth:`Family.collect_vision_signals` (tokens, optional [CLS], q/k of layers)
shrinking the placeholders  :meth:`Family.shrink_placeholders` (one run per visual unit)
positions and RoPE          :meth:`Family.position_embeddings` (the decoder's own rotary embedding)
driving the decoder         :meth:`Family.language_model` and :meth:`Family.visual_token_id` (what the
                            in-LLM engine wraps and which ids are visual)
applying a method           :meth:`Family.apply` / :meth:`Family.remove` / :meth:`Family.applied_config` /
                            :meth:`Family.last_trace` / :meth:`Family.describe`
==========================  ============================================================================

``llava.compression.apply(model, method, **options)`` finds the family of ``model`` and calls
:meth:`Family.apply`; family-specific options (Video-LLaVA's ``budget_mode`` / ``keep_cls``) are keyword
arguments of that family's ``apply``. A family module imports transformers and ``llava.compression``; never
``llava.model`` or ``llava.eval``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llava.compression.registry import (
    REQUIREMENTS,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    Stage,
    get_method,
    make_config,
)


class Family:
    """Base class of a model family's integration. Subclasses set the class attributes and override the methods.

    Attributes:
        name: the family's name (``"llava-1.5"``), used in errors and by ``python -m llava.compression.families``.
        stages: the compression stages the family integrates (a method acting elsewhere is refused).
        provides: capabilities methods may require (keys of ``registry.REQUIREMENTS``; ``"cls"`` when every
            visual unit has a [CLS] token).
    """

    name: ClassVar[str] = ""
    stages: ClassVar[tuple[Stage, ...]] = ()
    provides: ClassVar[frozenset[str]] = frozenset()

    # -- which models, and what a method may ask of them -----------------------------------------------------

    def supports(self, model: Any) -> bool:
        """Whether ``model`` (a loaded model instance) belongs to this family."""
        raise NotImplementedError

    def refusal(self, spec: MethodSpec) -> str | None:
        """Why ``spec`` cannot run on this family (``None`` when it can), independent of any checkpoint."""
        missing_stages = [s.value for s in spec.stages if s not in self.stages]
        if missing_stages:
            return (
                f"method {spec.name!r} acts at stage(s) {missing_stages}, which the model family {self.name!r} does "
                f"not integrate (it integrates {[s.value for s in self.stages]})"
            )
        missing = sorted(spec.requires - self.provides)
        if missing:
            needs = ", ".join(REQUIREMENTS[m] for m in missing)
            return (
                f"method {spec.name!r} needs {needs} (requires {missing}), which the model family {self.name!r} "
                "does not have"
            )
        return None

    def geometry(self, model: Any) -> ModelGeometry:
        """The geometry of one visual unit of ``model`` (what method configs validate against)."""
        raise NotImplementedError

    def unit_geometries(self, model: Any, **inputs: Any) -> list[ModelGeometry]:
        """One geometry per visual unit of the given inputs (images, crops, frames). Families with a fixed
        grid return the same geometry for each unit; families with dynamic resolution read it from ``inputs``
        (e.g. ``image_grid_thw``)."""
        raise NotImplementedError

    # -- vision signals, placeholders, positions, decoder ------------------------------------------------------

    def collect_vision_signals(self, model: Any, pixel_values: Any, layers: tuple[int, ...] = (), **options: Any):
        """Run the vision tower once; ``(VisionSignals, tower_output)`` for a pre-LLM method."""
        raise NotImplementedError

    def shrink_placeholders(
        self, model: Any, input_ids: Any, attention_mask: Any, counts: list[int], pad_token_id: int | None = None
    ) -> tuple[Any, Any]:
        """Shrink each visual unit's placeholder run to its kept count ``counts[i]``; ``(input_ids, mask)``."""
        raise NotImplementedError

    def language_model(self, model: Any) -> Any:
        """The decoder stack the in-LLM engine drives (has ``layers``, ``rotary_emb``, ``norm``)."""
        raise NotImplementedError

    def visual_token_id(self, model: Any) -> int:
        """The placeholder id whose positions hold visual tokens in the decoder's input."""
        raise NotImplementedError

    def position_embeddings(self, model: Any, hidden_states: Any, position_ids: Any) -> Any:
        """The ``(cos, sin)`` the decoder layers receive for ``position_ids`` (``[B, T]``, or ``[3, B, T]`` for
        M-RoPE families), built by the model's own rotary embedding."""
        return self.language_model(model).rotary_emb(hidden_states, position_ids=position_ids)

    # -- applying a method ---------------------------------------------------------------------------------------

    def build_config(self, model: Any, method: str | MethodConfig, **arguments: Any) -> MethodConfig:
        """The validated config of ``method`` for ``model``: stage and requirement checks, then the method's own."""
        from llava.compression.registry import CompressionConfigError

        if isinstance(method, MethodConfig) and arguments:
            raise CompressionConfigError("pass either a method config or a method name with arguments, not both")
        if not isinstance(method, str | MethodConfig):
            raise CompressionConfigError(f"method must be a name or a MethodConfig, got {type(method).__name__}")
        spec = get_method(method if isinstance(method, str) else method.name)
        if not spec.stages:  # "none"
            return method if isinstance(method, MethodConfig) else make_config(spec.name, None, **arguments)
        reason = self.refusal(spec)
        if reason is not None:
            raise CompressionConfigError(reason + "; python -m llava.compression.families lists what applies")
        geometry = self.geometry(model)
        if isinstance(method, MethodConfig):
            method.validate(geometry)
            return method
        return make_config(spec.name, geometry, **arguments)

    def apply(self, model: Any, method: str | MethodConfig, **options: Any) -> Any:
        """Apply ``method`` (name + arguments, or a config) to this model instance; ``"none"`` removes it."""
        raise NotImplementedError

    def remove(self, model: Any) -> Any:
        """Restore the unmodified model (no-op when nothing is applied); returns ``model``."""
        raise NotImplementedError

    def applied_config(self, model: Any) -> MethodConfig:
        """The config applied to ``model`` (the ``none`` config when nothing is)."""
        raise NotImplementedError

    def last_trace(self, model: Any) -> list[dict[str, Any]] | None:
        """Per-unit traces of the last encoding (``None`` before any / without a method)."""
        raise NotImplementedError

    def describe(self, model: Any) -> dict[str, Any]:
        """``{"method", "method_args", ...}`` of what is applied, for answer metadata."""
        config = self.applied_config(model)
        return {"family": self.name, "method": config.name, "method_args": config.to_dict()}
