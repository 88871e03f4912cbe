"""The ``Stage.LLM`` contract: dropping visual tokens between decoder layers.

An in-LLM method is an :class:`LLMPruningMethod` config. The engine (one per model family, e.g.
``llava.compression.families.decoder_pruning``) runs the decoder, and *before* each layer ``K`` of the method's
schedule (:meth:`LLMPruningMethod.prune_layers`) it hands the method a :class:`PruneStep` describing the current
(already shortened) sequence. The method returns one :class:`RowSelection` per batch row: which of the row's current
visual tokens to keep (and, optionally, new merged tokens to insert). Layers ``>= K`` then run on the shorter
sequence. Nothing here knows a model class; the engine implements :class:`PruneStep`.

Conventions shared by every method (and documented in ``docs/benchmarks.md``):

* "prune before layer ``K``": layers ``0 .. K-1`` see the full sequence, layers ``K ..`` the kept tokens.
  ``K >= 1`` always (layer 0's cache length drives ``generate()``) and ``K <= L - 1``.
* Attention rows are computed from a layer's own queries and keys (never from returned attention maps), so every
  layer keeps its attention backend (SDPA, FlashAttention, eager).
* Text tokens are never dropped; rows without visual tokens are left untouched.
* Pruning happens once, at prefill, from the prompt; decode steps reuse the pruned per-layer caches.
* Position ids: ``"original"`` (kept tokens keep their positions, generated tokens continue after the original
  prompt length) or ``"compact"`` (positions renumbered ``0..n-1`` after each drop, generated tokens continue after
  the shortened length: PyramidDrop's and SparseVLM v1.5's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llava.compression.pre_llm import check_choice, check_int
from llava.compression.primitives import first_true
from llava.compression.registry import CompressionConfigError, MethodConfig, ModelGeometry, option

POSITION_MODES = ("original", "compact")


@dataclass
class RowSelection:
    """What a method keeps of one batch row at one pruning layer.

    Attributes:
        keep: ``[k]`` long, ascending indices into the row's current visual tokens (``PruneStep.visual_indices``).
        merged: optional ``[m, D]`` new visual tokens (hidden states entering layer ``K``), inserted right after the
            row's last kept visual token, in this order.
        merged_position_of: optional ``[m]`` long, for each merged token the current visual token (index as in
            ``keep``) whose position id it takes under ``"original"`` positions (e.g. its cluster centre).
    """

    keep: torch.Tensor
    merged: torch.Tensor | None = None
    merged_position_of: torch.Tensor | None = None


class PruneStep:
    """What the engine offers a method before pruning layer ``layer`` (stage ``stage`` of the schedule).

    Shapes: ``B`` rows, ``T`` current tokens (after earlier stages; rows may carry masked filler/padding),
    ``T0`` tokens at the LLM input, ``D`` hidden width, ``H`` query heads.

    Attributes:
        layer: the layer about to run on the pruned sequence (``K``).
        stage: index of ``layer`` in the method's schedule.
        geometry: the geometry the config was validated against (a method derives its schedule from it).
        hidden: ``[B, T, D]`` hidden states entering layer ``K`` (= output of layer ``K-1``).
        visual: ``[B, T]`` bool, current visual tokens (merged ones included).
        valid: ``[B, T]`` bool, attended tokens (not padding / filler).
        prompt: ``[B, T]`` bool, valid tokens of the prompt (excludes tokens after a pinned prompt length).
        orig_index: ``[B, T]`` long, index of each token in the LLM input (``-1`` for merged tokens).
        inputs_embeds: ``[B, T0, D]`` the LLM input embeddings.
        input_visual / input_prompt: ``[B, T0]`` bool masks of the LLM input.
        visual_counts: per row, the number of current visual tokens, known on the host (from the layout of the
            LLM input and the shapes of earlier selections) so that :meth:`visual_indices` needs no device sync;
            ``None`` when the engine does not provide it.
    """

    layer: int
    stage: int
    geometry: ModelGeometry
    hidden: torch.Tensor
    visual: torch.Tensor
    valid: torch.Tensor
    prompt: torch.Tensor
    orig_index: torch.Tensor
    inputs_embeds: torch.Tensor
    input_visual: torch.Tensor
    input_prompt: torch.Tensor
    visual_counts: tuple[int, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    def visual_indices(self, row: int) -> torch.Tensor:
        """Ascending current indices of the row's (valid) visual tokens (without a device sync when
        :attr:`visual_counts` is known)."""
        mask = self.visual[row] & self.valid[row]
        if self.visual_counts is None:
            return torch.nonzero(mask).flatten()
        return first_true(mask, self.visual_counts[row])

    def input_visual_count(self, row: int) -> int:
        """Visual tokens of the row at the LLM input (``N_v``)."""
        return int((self.input_visual[row] & self.input_prompt[row]).sum())

    def last_prompt_index(self) -> torch.Tensor:
        """``[B]`` current index of each row's last prompt token (the query FastV / PyramidDrop score with)."""
        t = self.prompt.shape[1]
        idx = torch.arange(t, device=self.prompt.device).expand_as(self.prompt)
        return torch.where(self.prompt, idx, -1).amax(dim=1).clamp_(min=0)

    def text_after_visual(self, row: int) -> torch.Tensor:
        """Ascending current indices of the row's prompt text tokens after its last visual token."""
        vis = self.visual_indices(row)
        after = self.prompt[row] & ~self.visual[row]
        if vis.numel():
            after = after & (torch.arange(after.shape[0], device=after.device) > vis[-1])
        return torch.nonzero(after).flatten()

    def attention(
        self, layer: int, queries: torch.Tensor, query_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, H, Q, T]`` fp32 attention probabilities of layer ``layer`` (``K-1`` or ``K``).

        ``queries`` is ``[B, Q]`` current token indices. Row ``q`` is the softmax of that token's query (from
        ``layer``'s own ``input_layernorm``/``q_proj``/RoPE) against the keys of all valid tokens up to it (causal,
        padding masked), exactly as the layer's own attention would weight them. ``query_valid`` marks padded
        query slots (their rows are meaningless).
        """
        raise NotImplementedError

    def queries(self, layer: int, index: torch.Tensor) -> torch.Tensor:
        """``[B, H, Q, d]`` post-RoPE queries of layer ``layer`` (``K-1`` or ``K``) for current indices ``[B, Q]``.

        Layer ``K-1``'s come from that layer's own ``q_proj`` output, captured during its forward, when the method
        lists ``K-1`` in :meth:`LLMPruningMethod.query_layers`; otherwise they are recomputed with the layer's
        ``input_layernorm`` / ``q_proj`` for the requested tokens only. RoPE is applied either way.
        """
        raise NotImplementedError

    def keys(self, layer: int) -> torch.Tensor:
        """``[B, H_kv, T, d]`` post-RoPE keys of layer ``layer`` (``K-1`` or ``K``) for the current tokens.

        Layer ``K-1``'s come from the cache at prefill (exactly what that layer attended with);
        otherwise they are recomputed with the layer's ``input_layernorm`` / ``k_proj`` / RoPE.
        """
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The model's final norm (before the LM head) applied to ``x``."""
        raise NotImplementedError


@dataclass(frozen=True)
class LLMPruningMethod(MethodConfig):
    """Base class of the configs of ``Stage.LLM`` methods.

    Subclasses define :meth:`prune_layers` (validated schedule) and :meth:`select`, and should call
    :func:`check_layers` from ``validate``.
    """

    default_positions: ClassVar[str] = "original"
    # why a transformers StaticCache cannot hold this method's pruned prefill (None: it can, because every row keeps
    # a number of tokens fixed by the config and the row's visual-token count, so the shapes are known in advance)
    static_cache_refusal: ClassVar[str | None] = "it decides per row from the data how many tokens it keeps"

    def prune_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        """Strictly increasing layers ``K`` (each ``1 <= K <= L - 1``) before which tokens are dropped."""
        raise NotImplementedError

    def position_mode(self) -> str:
        return getattr(self, "llm_positions", None) or self.default_positions

    def select(self, step: PruneStep) -> list[RowSelection | None]:
        """One entry per row (``None`` = keep the row as is, e.g. it has no visual tokens)."""
        raise NotImplementedError

    def trace_extras(self, geometry: ModelGeometry) -> dict[str, Any]:
        """Extra JSON-serialisable fields for every row's trace (e.g. a solved schedule)."""
        return {}

    def query_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        """Layers whose ``q_proj`` outputs the engine keeps at prefill for :meth:`PruneStep.queries`.

        Each must be ``K-1`` for a pruning layer ``K``. Worth it when a method needs the queries of many tokens
        (FiCoCo-L: every visual and following text token): the engine captures them from the layer's own forward
        instead of recomputing the projection. Default: none (a few queries are cheaper to recompute).
        """
        return ()


def positions_option(default: str) -> Any:
    """The shared ``--llm-positions`` field (each method passes its own default)."""
    return option(
        default,
        "--llm-positions",
        "in-LLM methods: position ids after a drop: 'original' (kept tokens keep theirs) or 'compact' "
        "(renumbered; PyramidDrop / SparseVLM default)",
        choices=POSITION_MODES,
    )


def budget_option() -> Any:
    """The shared ``--visual-token-num`` field of the in-LLM methods (``None``: the method's own default)."""
    return option(
        None,
        "--visual-token-num",
        "visual tokens kept (pre-LLM methods: given to the LLM; fastv/dart: kept from the pruning layer on; "
        "pdrop: layer-averaged target; sparsevlm: budget preset)",
        type=int,
    )


def check_positions(value: Any) -> str:
    return check_choice("--llm-positions", value, POSITION_MODES)


def check_layers(flag: str, layers: Sequence[int], geometry: ModelGeometry) -> tuple[int, ...]:
    """Pruning layers must be strictly increasing and within ``1 .. L-1`` (layer 0 is never pruned)."""
    layers = tuple(layers)
    if not layers:
        raise CompressionConfigError(f"{flag}: at least one pruning layer is required")
    last = geometry.llm_layers - 1
    for k in layers:
        check_int(flag, k, 1, last, f" (the LLM has {geometry.llm_layers} layers; layer 0 is never pruned)")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise CompressionConfigError(f"{flag}: layers must be strictly increasing, got {list(layers)}")
    return layers


def parse_int_list(flag: str, value: Any) -> tuple[int, ...]:
    """``"2,6,15"`` / ``[2, 6, 15]`` -> ``(2, 6, 15)``; raises :class:`CompressionConfigError`."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(" ", ",").split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise CompressionConfigError(
                f"{flag} must be a comma-separated list of integers, got {value!r}"
            ) from None
    if isinstance(value, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise CompressionConfigError(f"{flag} must be a comma-separated list of integers, got {value!r}")
