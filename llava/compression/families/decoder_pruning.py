"""The engine for dropping visual tokens between decoder layers (``Stage.LLM``) of Llama-family decoders.

Targets transformers 5.23 (pinned): ``LlamaModel`` and decoders with the same structure (``embed_tokens``,
``layers[i].input_layernorm`` / ``.self_attn.{q_proj,k_proj,head_dim,scaling}``, ``rotary_emb``, ``norm``, and an
``apply_rotary_pos_emb`` in the attention's modeling module). The decoder's own ``forward`` runs unchanged.

Where it hooks (all per model instance, nothing at class level, no ``__class__`` swap, no copied forward):

* a forward pre-hook on the decoder (``LlamaModel``) creates one :class:`_Call` per forward (from the call's 2-D
  ``attention_mask`` and its ``visual_mask`` keyword argument, or ``input_ids == image_token_id``) and hands it on in
  the keyword arguments, which ``LlamaModel.forward`` passes to every decoder layer;
* each decoder layer's ``forward`` is wrapped on the instance: the wrapper takes the :class:`_Call` out of its keyword
  arguments and, from a pruning layer ``K`` on, gives the layer the shortened hidden states with the matching
  attention mask, position embeddings and position ids instead of the full-sequence ones ``LlamaModel.forward``
  passes; the shorter hidden states then flow out of ``LlamaModel.forward`` to its ``norm`` (and the LM head);
* on a LLaVA model, :func:`mark_visual_tokens` puts a forward pre-hook on the ``LlavaModel`` that passes
  ``visual_mask = input_ids == image_token_id`` of every call down to the decoder as a keyword argument, and
  ``model.generate`` is wrapped so that its result carries the per-input-row trace (``.llm_compression_trace``);
* for the layers a method lists in ``query_layers`` (each ``K-1`` of a pruning layer ``K``: FiCoCo-L), a forward hook
  on ``layers[K-1].self_attn.q_proj`` that hands its output to the running prefill (a reference, no copy, no extra
  matmul); ``PruneStep.queries`` gathers the requested rows from it instead of recomputing ``q_proj``.

Prefill (``past_key_values`` empty or absent), before layer ``K``:

1. the method gets a :class:`~llava.compression.llm.base.PruneStep`: hidden states entering ``K`` and ``K-1``, masks
   of visual / valid / prompt tokens, and on demand attention rows computed from layer ``K-1``'s or ``K``'s *own*
   ``input_layernorm`` + ``q_proj`` + the model's ``apply_rotary_pos_emb`` with the ``cos``/``sin`` the layer
   receives, for the few queries it needs, against that layer's post-RoPE keys (read from the ``DynamicCache`` for
   ``K-1``; recomputed with ``k_proj`` otherwise). SDPA/FlashAttention stay on in every layer;
2. it returns the visual tokens to keep per row (plus optional merged tokens, SparseVLM);
3. each row's sequence becomes: its valid non-visual tokens + kept visual tokens (+ merged ones after the last kept
   visual token), in sequence order; rows are left-filled to the longest row with masked filler (existing padding
   or dropped tokens), so rows may keep different counts and text-only rows are untouched;
4. hidden states, position ids (a :class:`~llava.compression.llm.positions.Positions`; ``original``: gathered,
   ``compact``: renumbered) and the 2-D mask are gathered; ``cos``/``sin`` are gathered from the ones the layer
   received (``original``) or computed by the model's ``rotary_emb`` on the renumbered ids (``compact``), and the
   4-D mask is rebuilt with ``create_causal_mask(..., position_ids=None, layer_idx=K)`` (sized from layer ``K``'s
   cache; ``position_ids=None`` avoids the packed-sequence trap). Layers ``>= K`` run on the shorter sequence and
   cache only its keys/values.

Decode (``past_key_values`` non-empty): never re-prunes. ``generate()`` keeps advancing position ids and the 2-D
mask in original coordinates (it reads layer 0's cache length, and layer 0 is never pruned). For the layers of
each pruned segment the engine uses ``[segment prompt mask, new-token mask]`` and position ids minus the segment's
shift (0 under ``original`` positions, so generated tokens continue after the original prompt length). The
segments of a prefill are kept with the cache they filled (a weak mapping cache -> segments), so each cache is
decoded with its own layout.

Trace: after each prefill the engine records one dict per batch row with ``visual_tokens_per_layer`` (valid visual
tokens in the *input* of every decoder layer, merged tokens included), ``avg_visual_tokens`` (their mean over
layers), ``llm_pruning_layers`` and ``llm_kept_indices`` (pruning layer, as a string -> the visual tokens entering
that layer: ascending indices ``i`` into the row's visual tokens at the LLM input, then every merged/recycled
token as ``-1 - i``, ``i`` the token whose place it takes; ``{}`` for a row without visual tokens), built when first
read (the kept indices stay on the device until then). It is the engine's one :func:`last_trace`; the ``generate`` wrapper puts it on its result as ``llm_compression_trace`` with
one dict per *input* row (beams / returned sequences collapsed).

Host synchronisation: the prefill's shapes come from a :class:`VisualLayout` read before the forward (the
``generate`` wrapper reads it; :func:`known_layout`), from the shapes of the methods' selections and from
:func:`~llava.compression.primitives.first_true`, so a fixed-count method (FastV) prunes without the host waiting for
the device; checks of a method's output are device-side asserts.

Static caches: a method whose shapes are fixed by its config (``static_cache_refusal = None``: FastV, PyramidDrop)
also runs with a full-attention ``StaticCache`` (``cache_implementation="static"``): every static layer writes at its
own length, so a pruned layer holds its kept tokens first, then the generated ones; the 4-D mask ``generate()``
passes with such a cache gives the padding mask (its last query row), and a prefill is the cache's first forward or
one of several tokens (its length lives on the device). Other methods refuse it with one error naming the method and
the reason.

Limits: ``DynamicCache``, or ``StaticCache`` for fixed-shape methods; inference only (outputs after layer ``K`` have fewer positions, so ``labels`` do not
line up); a 2-D ``attention_mask`` (or none); without a cache every forward re-prunes from its own last prompt token
unless :func:`pin_prompt` fixes the prompt length.
"""

from __future__ import annotations

import contextlib
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, StaticCache
from transformers.masking_utils import create_causal_mask

from llava.compression.llm import scoring
from llava.compression.llm.base import LLMPruningMethod, PruneStep, RowSelection
from llava.compression.llm.positions import Positions, rope_positions
from llava.compression.llm.schedule import average_tokens
from llava.compression.primitives import first_true
from llava.compression.registry import CompressionConfigError, ModelGeometry

STATE_ATTR = "_vtc_llm_pruning"
TRACE_ATTR = "llm_compression_trace"
# keyword argument of the decoder's forward: [B, T] bool, the visual tokens of the call
VISUAL_MASK_KWARG = "visual_mask"
# keyword argument the decoder's forward passes on to its layers: the running call (engine-internal)
CALL_KWARG = "_vtc_decoder_call"
# trace fields holding kept token indices (pre-LLM and in-LLM): recorded in answers only with --save-kept-tokens
KEPT_TOKEN_KEYS = ("kept_indices", "llm_kept_indices")


# -- state ----------------------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    """Layers ``start ..`` of one prefill: their prompt part of the 2-D mask and the decode position shift."""

    start: int
    prompt_mask: torch.Tensor  # [B, T_s] long
    shift: torch.Tensor  # [B] long: original position - segment position, for tokens after the prompt
    # a StaticCache only, so that decoding (compiled) depends on no prompt length: the prompt mask padded to the
    # cache length [B, L], and T_s and T - T_s as 0-d device tensors (where the segment's generated slots start, and
    # how far layer 0's slots are ahead of them)
    static_prompt: torch.Tensor | None = None
    static_end: torch.Tensor | None = None
    static_offset: torch.Tensor | None = None

    def static_mask(self, layer0: torch.Tensor | None, length: int) -> torch.Tensor:
        """``[B, L]`` 2-D mask of the segment's static slots from layer 0's (``[B, <= L]``, ``None``: all attended):
        its prompt part, then layer 0's part after the prompt, shifted to the segment's slots."""
        prompt = self.static_prompt
        b = prompt.shape[0]
        if layer0 is None:
            layer0 = torch.ones(b, length, dtype=prompt.dtype, device=prompt.device)
        layer0 = torch.nn.functional.pad(layer0.to(prompt.dtype), (0, length - layer0.shape[1]))
        slots = torch.arange(length, device=prompt.device)
        source = slots + self.static_offset
        generated = layer0.gather(1, source.clamp(max=length - 1).expand(b, length)) * (source < length)
        return torch.where(slots < self.static_end, prompt, generated)


@dataclass
class _Prefill:
    prompt_length: int  # T of the prefill (original coordinates)
    batch_size: int
    segments: list[_Segment]


@dataclass(frozen=True)
class VisualLayout:
    """Per batch row of the LLM input, read on the host *before* a forward: its visual tokens and its attended
    tokens. With it the prefill knows every shape in advance and never waits for the device (no ``.tolist()`` /
    ``nonzero()`` / ``int(tensor)`` on the hot path); without it the prefill reads the counts itself (one transfer).

    ``counts`` is the same ``[2, B]`` (visual, valid) on the device, for an asynchronous check against the forward's
    own masks; ``length`` the sequence length it was read from (a prefill of another length, e.g. after a vision-side
    method shrank the placeholders, reads its own).
    """

    visual: tuple[int, ...]
    valid: tuple[int, ...]
    counts: torch.Tensor
    length: int

    @classmethod
    def read(cls, visual: torch.Tensor, attention_mask: torch.Tensor | None) -> VisualLayout:
        """The layout of ``visual`` (``[B, T]`` bool) under a 2-D ``attention_mask`` (one device-to-host copy)."""
        valid = torch.ones_like(visual, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        counts = torch.stack([(visual.bool() & valid).sum(dim=1), valid.sum(dim=1)])
        visual_counts, valid_counts = counts.tolist()
        return cls(tuple(visual_counts), tuple(valid_counts), counts, visual.shape[1])

    def for_batch(self, batch: int, length: int) -> VisualLayout | None:
        """The layout of a ``[batch, length]`` prefill that repeats each row ``batch / B`` times in place (beams,
        returned sequences), or ``None`` when it cannot be this layout's."""
        rows = len(self.visual)
        if length != self.length or rows == 0 or batch % rows:
            return None
        if batch == rows:
            return self
        n = batch // rows
        return VisualLayout(
            tuple(v for v in self.visual for _ in range(n)),
            tuple(v for v in self.valid for _ in range(n)),
            self.counts.repeat_interleave(n, dim=1),
            self.length,
        )


class _QueryCapture:
    """Where the ``q_proj`` hooks of ``query_layers`` put their output: the running prefill's dict, set only while
    one of those layers runs (``None`` otherwise, so nothing outlives the layer call that produced it)."""

    def __init__(self) -> None:
        self.target: dict[int, torch.Tensor] | None = None


@dataclass
class EngineState:
    """Per-instance settings of the engine, stored in ``language_model.__dict__`` (never a registered submodule).

    Nothing of a forward lives here: each forward gets its own :class:`_Call`. What outlives a forward is the
    trace of the last prefill (:func:`last_trace`) and, per cache, the layout that cache was filled with.
    """

    config: LLMPruningMethod
    geometry: ModelGeometry
    layers: tuple[int, ...]
    query_layers: tuple[int, ...] = ()
    image_token_id: int | None = None
    # the traces of the last prefill, or a callable that builds them on first read (their kept indices stay on the
    # device until someone reads them, so the prefill itself never waits for the device): read through trace()
    last_trace: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]] | None = None
    pinned_prompt: int | None = None
    # the host-side layout of the next prefill, set by the generate wrapper (known_layout) for the call's duration
    layout: VisualLayout | None = None
    # DynamicCache -> the pruned layout of the prefill that filled it (dies with the cache)
    prefills: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    capture: _QueryCapture = field(default_factory=_QueryCapture)
    handles: list[Any] = field(default_factory=list)
    saved: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def captured_queries(self) -> dict[int, torch.Tensor] | None:
        """The ``q_proj`` outputs being captured right now (``None`` outside a query layer's forward)."""
        return self.capture.target

    def trace(self) -> list[dict[str, Any]] | None:
        """The traces of the last prefill (built from the device tensors on first read)."""
        if callable(self.last_trace):
            self.last_trace = self.last_trace()
        return self.last_trace


def _state(module: Any) -> EngineState | None:
    return module.__dict__.get(STATE_ATTR) if isinstance(module, torch.nn.Module) else None


def _language_model(model: Any) -> Any:
    """The decoder stack of a LLaVA model / CausalLM / bare decoder."""
    for path in (("model", "language_model"), ("language_model",), ("model",)):
        m = model
        for name in path:
            m = getattr(m, name, None)
        if isinstance(m, torch.nn.Module) and hasattr(m, "layers") and hasattr(m, "rotary_emb"):
            return m
    if hasattr(model, "layers") and hasattr(model, "rotary_emb"):
        return model
    raise TypeError(f"no Llama-style decoder found in {type(model).__name__}")


def _rotary_function(attn: torch.nn.Module):
    """The ``apply_rotary_pos_emb(q, k, cos, sin)`` the attention module's own modeling code uses."""
    return getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)


def _check_decoder(lm: Any) -> None:
    needed = ("embed_tokens", "layers", "rotary_emb", "norm", "config")
    missing = [n for n in needed if not hasattr(lm, n)]
    layer = lm.layers[0] if hasattr(lm, "layers") and len(lm.layers) else None
    for n in ("input_layernorm", "self_attn"):
        if layer is not None and not hasattr(layer, n):
            missing.append(f"layers[i].{n}")
    attn = getattr(layer, "self_attn", None)
    for n in ("q_proj", "k_proj", "head_dim", "scaling"):
        if attn is not None and not hasattr(attn, n):
            missing.append(f"self_attn.{n}")
    if attn is not None and _rotary_function(attn) is None:
        missing.append(f"apply_rotary_pos_emb in {type(attn).__module__}")
    if missing:
        raise TypeError(
            f"{type(lm).__name__} lacks {missing}: the in-LLM engine supports Llama-style decoders"
        )


# -- public API -----------------------------------------------------------------------------------------------------


def attach(
    language_model: torch.nn.Module,
    config: LLMPruningMethod,
    geometry: ModelGeometry,
    image_token_id: int | None = None,
) -> EngineState:
    """Install the engine on a bare decoder (``LlamaModel``). Validates ``config`` against ``geometry`` first.

    Visual tokens come from a ``visual_mask=[B, T] bool`` keyword argument of the decoder's ``forward``, else from
    ``input_ids == image_token_id`` when the decoder gets ``input_ids``. Returns the engine state.
    """
    if not isinstance(config, LLMPruningMethod):
        raise CompressionConfigError(f"{type(config).__name__} is not an in-LLM (Stage.LLM) method config")
    _check_decoder(language_model)
    if geometry.llm_layers != language_model.config.num_hidden_layers:
        raise CompressionConfigError(
            f"geometry says {geometry.llm_layers} LLM layers, the decoder has {language_model.config.num_hidden_layers}"
        )
    config.validate(geometry)
    layers = tuple(config.prune_layers(geometry))
    query_layers = tuple(sorted(set(config.query_layers(geometry))))
    bad = [q for q in query_layers if q + 1 not in layers]
    if bad:
        raise CompressionConfigError(
            f"{config.name}: query_layers {bad} are not K-1 of a pruning layer K (pruning layers {list(layers)})"
        )
    detach(language_model)
    state = EngineState(
        config=config,
        geometry=geometry,
        layers=layers,
        query_layers=query_layers,
        image_token_id=image_token_id,
    )
    for q in query_layers:
        proj = language_model.layers[q].self_attn.q_proj
        state.handles.append(proj.register_forward_hook(_capture_queries(state.capture, q)))
    for i, layer in enumerate(language_model.layers[: language_model.config.num_hidden_layers]):
        state.handles.append(layer.register_forward_pre_hook(_enter_layer(i), with_kwargs=True))
    state.handles.append(language_model.register_forward_pre_hook(_begin_call(state), with_kwargs=True))
    state.handles.append(language_model.register_forward_hook(_end_call, with_kwargs=True))
    language_model.__dict__[STATE_ATTR] = state
    return state


def detach(language_model: torch.nn.Module) -> None:
    """Undo :func:`attach` (no-op when nothing is attached)."""
    state = _state(language_model)
    if state is None:
        return
    for h in state.handles:
        h.remove()
    for name, (owner, previous) in state.saved.items():
        owner.__dict__.pop(name, None)
        if previous is not None:
            owner.__dict__[name] = previous
    del language_model.__dict__[STATE_ATTR]


def mark_visual_tokens(state: EngineState, multimodal_model: torch.nn.Module) -> None:
    """Make every forward of ``multimodal_model`` (a ``LlavaModel``-like module that passes its extra keyword
    arguments to its decoder) pass ``visual_mask`` (its ``input_ids == state.image_token_id``) down to the decoder.
    The hook goes with :func:`detach`."""
    state.handles.append(
        multimodal_model.register_forward_pre_hook(_visual_mask_hook(state.image_token_id), with_kwargs=True)
    )


def supports(model: Any) -> bool:
    try:
        _check_decoder(_language_model(model))
    except TypeError:
        return False
    return True


def apply(model: Any, config: LLMPruningMethod, geometry: ModelGeometry | None = None) -> Any:
    """Apply an in-LLM method to a ``LlavaForConditionalGeneration`` instance; returns ``model``.

    Installs the decoder engine, a pre-hook on ``model.model`` (the ``LlavaModel``) that passes where the image
    tokens are in every call's ``input_ids`` down to the decoder, and a per-instance ``generate`` wrapper whose
    result carries ``llm_compression_trace`` (one dict per input row).
    """
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "language_model"):
        raise TypeError(
            f"apply() expects a LLaVA model with .model.language_model, got {type(model).__name__}"
        )
    if geometry is None:
        from llava.compression.families.llava import model_geometry

        geometry = model_geometry(model)
    remove(model)
    lm = base.language_model
    state = attach(lm, config, geometry, image_token_id=model.config.image_token_id)
    mark_visual_tokens(state, base)
    state.saved["generate"] = (model, model.__dict__.get("generate"))
    model.generate = types.MethodType(_generate, model)
    return model


def remove(model: Any) -> Any:
    """Undo :func:`apply` (no-op when nothing is applied); returns ``model``."""
    try:
        lm = _language_model(model)
    except TypeError:
        return model
    detach(lm)
    return model


def applied_config(model: Any) -> LLMPruningMethod | None:
    """The in-LLM config applied to ``model`` (``None`` when none)."""
    try:
        state = _state(_language_model(model))
    except TypeError:
        return None
    return None if state is None else state.config


def last_trace(model: Any) -> list[dict[str, Any]] | None:
    """Per-row traces of the last prefill on ``model`` (one per *batch* row of that forward)."""
    try:
        state = _state(_language_model(model))
    except TypeError:
        return None
    return None if state is None else state.trace()


@contextlib.contextmanager
def known_layout(model: Any, layout: VisualLayout | None):
    """Within the block, the next prefill of ``model``'s decoder takes its per-row counts from ``layout`` (read
    before the forward with :meth:`VisualLayout.read`) instead of reading them from the device. The ``generate``
    wrapper does this for every call; a caller running its own forward can do the same."""
    state = _state(_language_model(model))
    if state is None:
        raise RuntimeError("no in-LLM method is applied to this model")
    previous, state.layout = state.layout, layout
    try:
        yield
    finally:
        state.layout = previous


@contextlib.contextmanager
def pin_prompt(model: Any, length: int):
    """Within the block, only the first ``length`` input positions count as the prompt for scoring.

    For a cache-free greedy loop that recomputes the pruned forward on prompt + generated tokens: the query row
    (FastV, PyramidDrop), raters (SparseVLM) and pivots (DART) stay those of the prompt, so every step keeps the
    same tokens as the cached ``generate()`` does.
    """
    state = _state(_language_model(model))
    if state is None:
        raise RuntimeError("no in-LLM method is applied to this model")
    previous, state.pinned_prompt = state.pinned_prompt, int(length)
    try:
        yield
    finally:
        state.pinned_prompt = previous


# -- hooks ----------------------------------------------------------------------------------------------------------


def _visual_mask_hook(image_token_id: int | None):
    """Pre-hook on the multimodal model: add ``visual_mask`` (its image-token positions) to the call's kwargs."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if image_token_id is None or VISUAL_MASK_KWARG in kwargs:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            visual = ids == image_token_id
        else:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                return None
            token = torch.tensor(image_token_id, device=embeds.device)
            visual = (embeds == module.get_input_embeddings()(token)).all(-1)
        return args, {**kwargs, VISUAL_MASK_KWARG: visual}

    return hook


def _begin_call(state: EngineState):
    """Pre-hook on the decoder: one :class:`_Call` per forward, handed to the layers through the kwargs."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        visual = kwargs.pop(VISUAL_MASK_KWARG, None)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if visual is None and input_ids is not None and state.image_token_id is not None:
            visual = input_ids == state.image_token_id
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        call = _Call(module, state, attention_mask, visual)
        call.rope = rope_positions(kwargs.get("position_ids"))  # M-RoPE decoders: the [3, B, T] positions
        kwargs[CALL_KWARG] = call
        return args, kwargs

    return hook


def _enter_layer(index: int):
    """Pre-hook on decoder layer ``index``: replace what ``LlamaModel.forward`` passes it (full-sequence hidden
    states, mask, position embeddings and ids) with what the running :class:`_Call` says the layer runs on."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = kwargs.get(CALL_KWARG)
        if call is None:
            return None
        kwargs = {k: v for k, v in kwargs.items() if k != CALL_KWARG}
        if args:
            args = (call.enter_layer(index, args[0], kwargs), *args[1:])
        else:
            kwargs["hidden_states"] = call.enter_layer(index, kwargs["hidden_states"], kwargs)
        return args, kwargs

    return hook


def _end_call(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """Forward hook on the decoder: close the call (the trace and the cache layout of a prefill)."""
    call = kwargs.get(CALL_KWARG)
    if call is None:
        return
    if not call.entered:
        raise RuntimeError(
            f"{type(module).__name__}.forward did not pass its keyword arguments on to its decoder layers, so the "
            "in-LLM engine could not run: re-sync llava/compression/families/decoder_pruning.py with the installed "
            "transformers"
        )
    call.end()


def _capture_queries(capture: _QueryCapture, layer: int):
    """Forward hook on ``layers[layer].self_attn.q_proj``: hand its output (a reference) to the running prefill."""

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if capture.target is not None:
            capture.target[layer] = output

    return hook


def _generate(self, *args: Any, **kwargs: Any):
    """``generate`` whose result carries the in-LLM trace as ``result.llm_compression_trace`` (one dict per input
    row; also on a plain tensor result). Nothing is written into the model."""
    state = _state(self.model.language_model)
    _, previous = state.saved["generate"]
    original = previous if previous is not None else types.MethodType(type(self).generate, self)
    state.last_trace = None
    inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    layout = None
    mask = kwargs.get("attention_mask")
    if state.image_token_id is not None and isinstance(inputs, torch.Tensor) and inputs.dim() == 2 and (
        isinstance(mask, torch.Tensor) and mask.dim() == 2  # without one, generate() may infer it from padding
    ):
        # the prefill's shapes, read once here, before any forward (input_ids on the device: one transfer)
        layout = VisualLayout.read(inputs == state.image_token_id, mask)
    with known_layout(self, layout):
        result = original(*args, **kwargs)
    trace = state.trace()
    if trace and inputs is not None and len(trace) % inputs.shape[0] == 0:
        # generate() repeats each input row (beams, num_return_sequences): one trace per input row
        trace = trace[:: len(trace) // inputs.shape[0]]
    setattr(result, TRACE_ATTR, trace)
    return result


# -- one forward of the decoder -------------------------------------------------------------------------------------


@dataclass
class _View:
    """What the decoder layers of one segment receive."""

    mask: Any
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    positions: Positions


class _Call:
    """One forward of the decoder: created by its pre-hook, handed to every layer in the keyword arguments."""

    def __init__(self, lm, state: EngineState, attention_mask, visual):
        if attention_mask is not None and attention_mask.dim() not in (2, 4):
            raise ValueError("in-LLM token pruning needs a 2-D attention_mask (or none)")
        self.lm, self.state = lm, state
        # 2-D; a 4-D mask (what generate() passes with a static cache) gives the padding mask of its last query row
        self.four_d = attention_mask is not None and attention_mask.dim() == 4
        self.attention_mask, self.visual = _padding_mask(attention_mask), visual
        self.run: _PrefillRun | _DecodeRun | None = None
        self.view: _View | None = None  # what layers get from the current segment on (None: what they receive)
        self.layer_input: torch.Tensor | None = None  # input of the layer that ran last
        self.captured: dict[int, torch.Tensor] = {}  # q_proj outputs of query_layers, this prefill only
        self.entered = False  # whether the layers got this call (the seam this engine relies on)
        self.rope: Positions | None = None  # multi-axis positions of an M-RoPE decoder's call (layers get none)

    def _begin(self, hidden: torch.Tensor, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")
        static = _check_cache(cache, self.state.config)
        if self.four_d and not static:
            raise ValueError("in-LLM token pruning needs a 2-D attention_mask (or none; 4-D with a StaticCache)")
        positions = self._positions(kwargs)
        if static:
            # a StaticCache's length lives on the device: a prefill is its first forward or one of several tokens
            past_seen = None
            prefill = not cache.layers[0].is_initialized or hidden.shape[1] > 1
        else:
            past_seen = cache.get_seq_length() if cache is not None else 0
            prefill = past_seen == 0
        if prefill:
            self.run = _PrefillRun(self.lm, self.state, hidden, self.attention_mask, positions, self.visual, cache)
        else:
            self.run = _DecodeRun.create(self.lm, self.state, self.attention_mask, positions, cache, past_seen)
        capturing = isinstance(self.run, _PrefillRun) and bool(self.run.starts) and bool(self.state.query_layers)
        self.state.capture.target = self.captured if capturing else None

    def _positions(self, kwargs: dict) -> Positions:
        """The positions of the call's tokens: the decoder's multi-axis ones (M-RoPE), else the layer's ids."""
        return self.rope if self.rope is not None else Positions(kwargs["position_ids"])

    def enter_layer(self, index: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The hidden states layer ``index`` runs on; updates ``kwargs`` (what the layer gets) in place."""
        if index == 0:
            self._begin(hidden, kwargs)
            self.entered = True
        run = self.run
        if run is not None and index in run.starts:
            received = self.view or _View(
                kwargs.get("attention_mask"), kwargs["position_embeddings"], self._positions(kwargs)
            )
            hidden, self.view = run.enter(index, hidden, self.layer_input, received, self.captured)
        if self.view is not None:
            kwargs["attention_mask"] = self.view.mask
            kwargs["position_embeddings"] = self.view.position_embeddings
            kwargs["position_ids"] = self.view.positions.layer_ids
        self.layer_input = hidden
        return hidden

    def end(self) -> None:
        self.state.capture.target = None
        self.captured.clear()
        self.layer_input = None
        if isinstance(self.run, _PrefillRun):
            self.run.finish()


# -- prefill: scoring and pruning ----------------------------------------------------------------------------------


def _per_row(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``[..., 1 or B, T, d]`` -> ``[..., B, T, d]`` (position embeddings shared by all rows, broadcast)."""
    return x.expand(*x.shape[:-3], batch, *x.shape[-2:])


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., B, T, d]`` (e.g. ``cos``), ``index`` ``[B, T']`` -> ``[..., B, T', d]``."""
    x = _per_row(x, index.shape[0])
    return torch.gather(x, -2, index[..., None].expand(*x.shape[:-3], *index.shape, x.shape[-1]))


def _padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 2-D mask as is; a 4-D one (``[B, 1, Q, KV]``, bool or additive) -> ``[B, KV]`` bool, its last query row: every
    token the last query attends to (padding and not-yet-written static cache slots excluded)."""
    if attention_mask is None or attention_mask.dim() == 2:
        return attention_mask
    row = attention_mask[:, 0, -1]
    return row if row.dtype == torch.bool else row == 0


def _check_cache(cache: Any, config: LLMPruningMethod) -> bool:
    """``True`` for a :class:`StaticCache` the method can fill, ``False`` for a :class:`DynamicCache` or none;
    otherwise one clear error naming the method and why."""
    if cache is None or isinstance(cache, DynamicCache):
        return False
    if not isinstance(cache, StaticCache) or any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        raise TypeError(
            f"in-LLM token pruning needs a DynamicCache or a full-attention StaticCache, got {type(cache).__name__}"
        )
    if config.static_cache_refusal is not None:
        raise TypeError(
            f"{config.name} cannot use a StaticCache: {config.static_cache_refusal}, so its pruned shapes are not "
            "known in advance; use the default DynamicCache (do not set cache_implementation='static')"
        )
    return True


def _rotate(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (``[B, heads, n, d]`` queries or keys) rotated as the attention module's own code does."""
    rotated, _ = _rotary_function(attn)(x, x, cos, sin)
    return rotated


class _Step(PruneStep):
    """:class:`PruneStep` backed by the decoder: q/k of layers ``K-1`` and ``K`` for the current tokens."""

    def __init__(
        self,
        run: _PrefillRun,
        layer: int,
        stage: int,
        hidden: torch.Tensor,
        prev_hidden: torch.Tensor,
        view: _View,
        captured_queries: torch.Tensor | None = None,
    ):
        self.run, self.layer, self.stage = run, layer, stage
        self.geometry = run.state.geometry
        self._captured_queries = captured_queries  # [B, T, H*d] layer K-1's q_proj output, pre-RoPE
        self.hidden, self.prev_hidden = hidden, prev_hidden
        cos, sin = view.position_embeddings  # what layer K-1 received, for the current tokens
        self._cos, self._sin = _per_row(cos, hidden.shape[0]), _per_row(sin, hidden.shape[0])
        self.visual, self.valid, self.prompt, self.orig_index = (
            run.visual,
            run.valid,
            run.prompt,
            run.orig_index,
        )
        self.inputs_embeds, self.input_visual, self.input_prompt = (
            run.inputs_embeds,
            run.input_visual,
            run.input_prompt,
        )
        self.visual_counts = tuple(run.visual_counts)
        self._keys: dict[int, torch.Tensor] = {}

    def _source(self, layer: int) -> torch.Tensor:
        if layer == self.layer - 1:
            return self.prev_hidden
        if layer == self.layer:
            return self.hidden
        raise ValueError(
            f"before layer {self.layer} only layers {self.layer - 1} and {self.layer} can be scored"
        )

    def keys(self, layer: int) -> torch.Tensor:
        if layer in self._keys:
            return self._keys[layer]
        src = self._source(layer)
        cache = self.run.cache
        t = src.shape[1]
        if (
            layer == self.layer - 1
            and cache is not None
            and layer < len(cache.layers)
            and getattr(cache.layers[layer], "keys", None) is not None
            and cache.layers[layer].keys.dim() == 4
            and cache.layers[layer].keys.shape[-2] == t
        ):
            k = cache.layers[layer].keys  # exactly what layer K-1 attended with (post-RoPE)
        elif layer == self.layer - 1 and isinstance(cache, StaticCache) and cache.layers[layer].is_initialized:
            k = cache.layers[layer].keys[:, :, :t]  # the same: this prefill wrote slots 0 .. t-1 of layer K-1
        else:
            block = self.run.lm.layers[layer]
            attn = block.self_attn
            x = block.input_layernorm(src)
            k = attn.k_proj(x).view(src.shape[0], t, -1, attn.head_dim).transpose(1, 2)
            k = _rotate(attn, k, self._cos, self._sin)
        self._keys[layer] = k
        return k

    def queries(self, layer: int, index: torch.Tensor) -> torch.Tensor:
        """``[B, H, Q, d]`` post-RoPE queries of layer ``layer`` for current token indices ``[B, Q]``."""
        src = self._source(layer)
        block = self.run.lm.layers[layer]
        attn = block.self_attn
        captured = self._captured_queries
        if layer == self.layer - 1 and captured is not None and captured.shape[:2] == src.shape[:2]:
            # exactly what layer K-1's attention used: no second q_proj
            q = torch.gather(captured, 1, index[..., None].expand(-1, -1, captured.shape[-1]))
        else:
            x = torch.gather(src, 1, index[..., None].expand(-1, -1, src.shape[-1]))
            q = attn.q_proj(block.input_layernorm(x))
        q = q.view(index.shape[0], index.shape[1], -1, attn.head_dim).transpose(1, 2)
        return _rotate(attn, q, _gather_tokens(self._cos, index), _gather_tokens(self._sin, index))

    def attention(
        self, layer: int, queries: torch.Tensor, query_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        queries = queries.to(self.hidden.device, torch.long)
        q = self.queries(layer, queries)
        k = self.keys(layer)
        allowed = scoring.causal_allowed(queries, self.valid)
        return scoring.attention_rows(q, k, self.run.lm.layers[layer].self_attn.scaling, allowed)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.run.lm.norm(x)


class _PrefillRun:
    """One prefill forward: current token bookkeeping, pruning at each scheduled layer, the trace."""

    def __init__(
        self, lm, state: EngineState, inputs_embeds, attention_mask, positions: Positions, visual, cache
    ):
        self.lm, self.state, self.cache = lm, state, cache
        self.inputs_embeds = inputs_embeds
        b, t = inputs_embeds.shape[:2]
        dev = inputs_embeds.device
        self.valid = (
            torch.ones(b, t, dtype=torch.bool, device=dev)
            if attention_mask is None
            else attention_mask[:, :t].bool()
        )
        if visual is None or tuple(visual.shape) != (b, t):
            visual = torch.zeros(b, t, dtype=torch.bool, device=dev)
        self.visual = visual.to(dev).bool() & self.valid
        layout = state.layout.for_batch(b, t) if state.layout is not None else None
        if layout is None:
            layout = VisualLayout.read(self.visual, self.valid)  # no layout from the caller: read it (one transfer)
        else:  # the caller's layout must describe this forward (checked on the device, without waiting for it)
            counts = torch.stack([self.visual.sum(dim=1), self.valid.sum(dim=1)])
            torch._assert_async(
                (counts == layout.counts.to(dev)).all(),
                "the visual layout given for this prefill does not match its input_ids / attention_mask",
            )
        # per row, on the host: current visual tokens and current attended tokens
        self.visual_counts, self.valid_counts = list(layout.visual), list(layout.valid)
        index = torch.arange(t, device=dev).expand(b, t)
        self.prompt = self.valid.clone()
        if state.pinned_prompt is not None:
            self.prompt &= index < state.pinned_prompt
        self.input_visual, self.input_prompt = self.visual, self.prompt
        self.orig_index = index
        # LLM-input index of the token each current token is or stands for (a merged token: the token whose
        # position it takes, e.g. SparseVLM's cluster centre or FiCoCo-L's preserved token)
        self.stand_in = index
        self.positions = positions.expand(b, t)
        self.next_position = self.positions.end(self.valid)
        self.mode = state.config.position_mode()
        self.prompt_length, self.batch_size = t, b
        self.starts = state.layers if any(self.visual_counts) else ()
        self.segments: list[_Segment] = []
        self.counts: list[tuple[int, list[int]]] = [(0, list(self.visual_counts))]
        # index of each LLM-input token among its row's visual tokens (-1 for the others)
        self.input_visual_index = torch.where(self.visual, self.visual.long().cumsum(dim=1) - 1, -1)
        # (layer, visual mask, orig_index, stand_in) of the tokens entering each pruning layer (read at finish())
        self.kept: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def enter(
        self,
        layer: int,
        hidden: torch.Tensor,
        prev_hidden: torch.Tensor,
        view: _View,
        captured: dict[int, torch.Tensor],
    ):
        stage = self.state.layers.index(layer)
        # layer K-1's q_proj output is consumed here: drop it (and anything older) so at most one stays alive
        q = captured.pop(layer - 1, None)
        for old in [i for i in captured if i < layer]:
            del captured[old]
        step = _Step(self, layer, stage, hidden, prev_hidden, view, captured_queries=q)
        selections = self.state.config.select(step)
        if len(selections) != hidden.shape[0]:
            raise RuntimeError(
                f"{self.state.config.name}: select() returned {len(selections)} rows, not {hidden.shape[0]}"
            )
        return self._rebuild(layer, hidden, view, selections, step)

    def _rebuild(
        self,
        layer: int,
        hidden: torch.Tensor,
        view: _View,
        selections: list[RowSelection | None],
        step: _Step,
    ):
        b, t, d = hidden.shape
        dev = hidden.device
        rows, merged_rows, merged_pos, kept_sets = [], [], [], []
        merged_stand_in: list[torch.Tensor | None] = []  # per row: the LLM-input token each merged one stands for
        counts = list(self.visual_counts)  # visual tokens per row after this layer (host)
        for r in range(b):
            sel = selections[r]
            vis = step.visual_indices(r)
            if sel is None or vis.numel() == 0:
                kept = first_true(self.valid[r], self.valid_counts[r])
                rows.append(kept)
                kept_sets.append(kept)
                merged_rows.append(None)
                merged_pos.append(None)
                merged_stand_in.append(None)
                continue
            keep = _check_keep(sel.keep, vis.numel(), self.state.config.name).to(dev)
            keep_mask = self.valid[r] & ~self.visual[r]
            keep_mask.index_fill_(0, vis[keep], True)  # not `[...] = True`: a host value copied in, a CUDA sync
            kept = first_true(keep_mask, self.valid_counts[r] - vis.numel() + keep.numel())
            kept_sets.append(kept)
            m = 0 if sel.merged is None else sel.merged.shape[0]
            counts[r] = keep.numel() + m
            if m == 0:
                rows.append(kept)
                merged_rows.append(None)
                merged_pos.append(None)
                merged_stand_in.append(None)
                continue
            keep = keep.sort().values
            anchor = vis[keep][-1] if keep.numel() else vis[-1]
            cut = int((kept <= anchor).sum())  # a data-dependent place: merging methods are not sync-free
            slots = t + torch.arange(m, device=dev)
            rows.append(torch.cat([kept[:cut], slots, kept[cut:]]))
            source = (
                vis[sel.merged_position_of.to(dev)]
                if sel.merged_position_of is not None
                else anchor.expand(m)
            )
            merged_rows.append(sel.merged.to(hidden.dtype))
            merged_pos.append(self.positions.take(r, source))
            merged_stand_in.append(self.stand_in[r, source])

        # Left-fill every row to the longest one with masked filler: the row's own unused tokens (its padding and
        # dropped tokens, so that keeping everything reproduces the input layout exactly), else a blank slot.
        new_t = max(int(x.numel()) for x in rows)
        max_m = max((x.shape[0] for x in merged_rows if x is not None), default=0)
        blank = t + max_m  # source index of an all-zero filler slot (only materialised when needed)
        index = torch.empty(b, new_t, dtype=torch.long, device=dev)
        valid = torch.zeros(b, new_t, dtype=torch.bool, device=dev)
        need_blank = False
        for r in range(b):
            n = rows[r].numel()
            fill = new_t - n
            if fill:
                unused = torch.ones(t, dtype=torch.bool, device=dev)
                unused.index_fill_(0, kept_sets[r], False)
                filler = first_true(unused, min(fill, t - kept_sets[r].numel()))
                if (
                    filler.numel() < fill
                ):  # a method merged more tokens into another row than this row dropped
                    need_blank = True
                    filler = torch.cat([torch.full((fill - filler.numel(),), blank, device=dev), filler])
                index[r, :fill] = filler
            index[r, fill:] = rows[r]
            valid[r, fill:] = True

        src_hidden, src_pos = hidden, self.positions
        src_visual, src_prompt, src_orig = self.visual, self.prompt, self.orig_index
        src_stand_in = self.stand_in
        extra = max_m + int(need_blank)
        if extra:
            pad = torch.zeros(b, extra, d, dtype=hidden.dtype, device=dev)
            pos_pad = self.positions.slots(extra)
            flag = torch.zeros(b, extra, dtype=torch.bool, device=dev)
            stand_pad = torch.full((b, extra), -1, dtype=self.stand_in.dtype, device=dev)
            for r, (mr, mp, ms) in enumerate(zip(merged_rows, merged_pos, merged_stand_in)):
                if mr is not None:
                    pad[r, : mr.shape[0]] = mr
                    pos_pad[..., r, : mp.shape[-1]] = mp
                    stand_pad[r, : ms.shape[0]] = ms
                    flag[r, : mr.shape[0]] = True  # merged tokens are visual prompt tokens
            src_hidden = torch.cat([hidden, pad], dim=1)
            src_pos = self.positions.cat(pos_pad)
            src_visual = torch.cat([self.visual, flag], dim=1)
            src_prompt = torch.cat([self.prompt, flag], dim=1)
            src_orig = torch.cat([self.orig_index, torch.full_like(stand_pad, -1)], dim=1)
            src_stand_in = torch.cat([self.stand_in, stand_pad], dim=1)

        new_hidden = torch.gather(src_hidden, 1, index[..., None].expand(-1, -1, d))
        positions = src_pos.gather(index)
        if self.mode == "compact":
            positions = positions.renumbered(valid, self.positions.start(self.valid))
            shift = self.next_position - positions.end(valid)
            # renumbered positions: the model's own rotary embedding of the new ids
            position_embeddings = self.lm.rotary_emb(new_hidden, position_ids=positions.ids)
        else:
            shift = torch.zeros(b, dtype=torch.long, device=dev)
            # kept positions: the rows of the cos/sin the layer received (merged / filler slots: their own ids)
            cos, sin = (_per_row(x, b) for x in view.position_embeddings)
            if extra:
                slot_cos, slot_sin = self.lm.rotary_emb(pad, position_ids=pos_pad)
                cos, sin = torch.cat([cos, slot_cos], dim=-2), torch.cat([sin, slot_sin], dim=-2)
            position_embeddings = (_gather_tokens(cos, index), _gather_tokens(sin, index))
        self.visual = torch.gather(src_visual, 1, index) & valid
        self.prompt = torch.gather(src_prompt, 1, index) & valid
        self.orig_index = torch.gather(src_orig, 1, index)
        self.stand_in = torch.gather(src_stand_in, 1, index)
        self.valid, self.positions = valid, positions
        self.visual_counts, self.valid_counts = counts, [x.numel() for x in rows]
        self.counts.append((layer, list(counts)))
        self.kept.append((layer, self.visual, self.orig_index, self.stand_in))

        mask_2d = valid.long()
        segment = _Segment(start=layer, prompt_mask=mask_2d, shift=shift)
        if isinstance(self.cache, StaticCache):
            length = self.cache.layers[layer].max_cache_len
            segment.static_prompt = torch.nn.functional.pad(mask_2d, (0, length - new_t))
            # torch.full: a fill kernel, not a host-to-device copy
            segment.static_end = torch.full((), new_t, dtype=torch.long, device=dev)
            segment.static_offset = torch.full((), self.prompt_length - new_t, dtype=torch.long, device=dev)
        self.segments.append(segment)
        # known on the host: whether any row is left-filled. Without filler the 2-D mask is all ones and the causal
        # mask may be skipped (SDPA's is_causal), as transformers itself would decide, but without reading the mask;
        # with filler nothing can be skipped, so transformers need not read it either (each read waits for the device)
        full = all(n == new_t for n in self.valid_counts)
        static = isinstance(self.cache, StaticCache)
        mask = create_causal_mask(
            config=self.lm.config,
            inputs_embeds=new_hidden,
            attention_mask=None if full else mask_2d,
            past_key_values=self.cache,
            position_ids=None,
            layer_idx=layer,
            allow_is_causal_skip=full and not static,  # a static cache's offset is a device tensor: never read it
        )
        return new_hidden, _View(mask, position_embeddings, positions)

    def finish(self) -> None:
        self.state.last_trace = _PendingTrace(
            self.lm.config.num_hidden_layers,
            self.batch_size,
            self.counts,
            list(self.state.layers),
            self.state.config.trace_extras(self.state.geometry),
            self.kept,
            self.input_visual_index,
        )
        if self.cache is not None and self.segments:
            self.state.prefills[self.cache] = _Prefill(self.prompt_length, self.batch_size, self.segments)
        elif self.cache is not None:
            self.state.prefills.pop(self.cache, None)


@dataclass
class _PendingTrace:
    """The traces of one prefill, built when first read: the counts are on the host already, the kept indices are
    read from the device only then (outside the forward)."""

    num_layers: int
    batch_size: int
    counts: list[tuple[int, list[int]]]  # (first layer, visual tokens per row from it on)
    layers: list[int]
    extras: dict[str, Any]
    kept: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]  # as _PrefillRun.kept
    input_visual_index: torch.Tensor  # as _PrefillRun.input_visual_index

    def kept_indices(self, row: int) -> dict[str, list[int]]:
        """Pruning layer -> the row's visual tokens entering it, as indices ``i`` into its LLM-input visual tokens:
        the unchanged ones ascending, then each merged / recycled token as ``-1 - i``, ``i`` the token whose place
        it takes. ``{}`` for a row without visual tokens."""
        if not self.counts[0][1][row]:
            return {}
        out = {}
        for layer, visual, orig_index, stand_in in self.kept:
            orig, stand = orig_index[row, visual[row]], stand_in[row, visual[row]]
            kept = self.input_visual_index[row, orig[orig >= 0]].sort().values.tolist()
            out[str(layer)] = kept + (-1 - self.input_visual_index[row, stand[orig < 0]]).tolist()
        return out

    def __call__(self) -> list[dict[str, Any]]:
        traces = []
        for r in range(self.batch_size):
            per_layer = [0] * self.num_layers
            for start, counts in self.counts:
                for layer in range(start, self.num_layers):
                    per_layer[layer] = int(counts[r])
            traces.append(
                {
                    "visual_tokens_per_layer": per_layer,
                    "avg_visual_tokens": average_tokens(per_layer),
                    "llm_pruning_layers": list(self.layers),
                    # pruning layer -> the visual tokens entering it (LLM-input visual-token indices; -1 - i: merged)
                    "llm_kept_indices": self.kept_indices(r),
                    **self.extras,
                }
            )
        return traces


def _check_keep(keep: Any, num_visual: int, method: str) -> torch.Tensor:
    """``keep`` as long indices; distinct and in range is checked on the device without waiting for it (an error
    surfaces at the next synchronisation), so that the shapes that follow are known on the host."""
    if not isinstance(keep, torch.Tensor) or keep.dim() != 1:
        raise RuntimeError(f"{method}: RowSelection.keep must be a 1-D index tensor")
    keep = keep.long()
    if keep.numel():
        ordered = keep.sort().values
        ok = (ordered[0] >= 0) & (ordered[-1] < num_visual) & (ordered.diff() > 0).all()
        torch._assert_async(ok, f"{method}: kept indices must be distinct and within the {num_visual} visual tokens")
    return keep


# -- decode: reuse the pruned segments ------------------------------------------------------------------------------


class _DecodeRun:
    """A forward after the prefill: per-segment 2-D masks and shifted position ids; never re-prunes.

    ``past_seen`` is ``None`` for a :class:`StaticCache`, whose lengths live on the device: each layer writes at its
    own length, so a pruned layer's slots are its kept prompt tokens, then the generated ones, and the layer-0
    mask's part after the prompt is the generated tokens' part of every segment's mask.
    """

    def __init__(self, lm, record: _Prefill, attention_mask, positions: Positions, cache, past_seen: int | None):
        self.lm, self.record, self.cache = lm, record, cache
        self.attention_mask, self.positions, self.past_seen = attention_mask, positions, past_seen
        self.starts = {s.start: s for s in record.segments}

    @classmethod
    def create(cls, lm, state: EngineState, attention_mask, positions: Positions, cache, past_seen: int | None):
        record = state.prefills.get(cache)  # the layout this cache was filled with (None: not pruned)
        if record is None:
            return None
        return cls(lm, record, attention_mask, positions, cache, past_seen)

    def enter(
        self,
        layer: int,
        hidden: torch.Tensor,
        prev_hidden: torch.Tensor,
        view: _View,
        captured: dict[int, torch.Tensor],
    ):
        seg = self.starts[layer]
        b, q = hidden.shape[:2]
        record = self.record
        if b != record.batch_size:
            raise RuntimeError(
                f"decode batch {b} does not match the pruned prefill batch {record.batch_size} (a cache is tied to "
                "the prompts it was filled with)"
            )
        if self.past_seen is None:  # static cache: fixed shapes, whatever the prompt length
            mask_2d = seg.static_mask(self.attention_mask, self.cache.layers[layer].max_cache_len)
        else:
            extra = self.past_seen + q - record.prompt_length  # tokens after the prompt, this step's included
            cached = self.cache.get_seq_length(layer)
            if cached != seg.prompt_mask.shape[1] + extra - q:
                raise RuntimeError(
                    f"layer {layer} caches {cached} tokens, expected {seg.prompt_mask.shape[1] + extra - q}: the cache "
                    "does not belong to the last pruned prefill"
                )
            if self.attention_mask is not None:
                tail = self.attention_mask[:, record.prompt_length :].to(seg.prompt_mask.dtype)
            else:
                tail = torch.ones(b, extra, dtype=seg.prompt_mask.dtype, device=hidden.device)
            mask_2d = torch.cat([seg.prompt_mask, tail], dim=1)
        positions = self.positions.expand(b, q).shifted(seg.shift)
        mask = create_causal_mask(
            config=self.lm.config,
            inputs_embeds=hidden,
            attention_mask=mask_2d,
            past_key_values=self.cache,
            position_ids=None,
            layer_idx=layer,
        )
        return hidden, _View(mask, self.lm.rotary_emb(hidden, position_ids=positions.ids), positions)
