"""DART (arXiv 2502.11494, ZichenWen1/DART): duplication-aware token reduction before decoder layer ``K``.

Pivots: layer ``K-1``'s post-RoPE keys with all key heads concatenated, L1 norm per token; the ``p`` visual tokens
and the ``q`` prompt text tokens after the image with the largest norms. Every pivot in turn claims the
``k = budget // (p + q)`` not-yet-claimed, non-pivot visual tokens whose final-norm'd hidden state (output of layer
``K-1`` through the model's last RMSNorm) is *least* cosine-similar to the pivot's. Kept: image pivots + claimed
tokens, original order, i.e. ``p + (p + q) k`` tokens (budget 192 / 128 / 64 -> 196 / 132 / 68 with ``p = q = 4``).

Claiming is greedy, so the pivots' order matters. ``--dart-pivot-order set`` (default, upstream): the order of
``list(set(image_pivots + text_pivots))`` with the pivots identified by their positions in the row's prompt
sequence (padding excluded), as the official code iterates a Python set of sequence indices; ``ascending``: sorted
sequence positions (image pivots, then text pivots). When fewer than ``q`` text tokens follow the image (upstream
fails there), ``k`` is recomputed for the pivots that exist, ``budget // (p + q')``.

Defaults: ``K = 2`` (``--dart-k``), budget ``--visual-token-num 128`` (``max_num_trunction``), ``p = q = 4``
(``--dart-pivot-image`` / ``--dart-pivot-text``). Needs keys and hidden states only; positions original (static
pruned cache for layers ``>= K``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from llava.compression.llm.base import (
    LLMPruningMethod,
    PruneStep,
    RowSelection,
    budget_option,
    check_layers,
    check_positions,
    positions_option,
)
from llava.compression.llm.schedule import per_layer_counts
from llava.compression.llm.scoring import key_l1_norm
from llava.compression.pre_llm import check_choice, check_int
from llava.compression.primitives import rank_indices
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

# -- algorithm (pure functions) ----------------------------------------------------------------------------------


DART_PIVOT_ORDERS = ("set", "ascending")


def dart_pivot_order(image_pivots: list[int], text_pivots: list[int], order: str) -> list[int]:
    """The order in which DART's pivots claim tokens, as sequence positions.

    ``"set"`` (upstream): ``list(set(image_pivots + text_pivots))``, built from Python ints exactly as the official
    code does, so the order is CPython's iteration order of a small-int set (``hash(i) == i``: the order of the
    hash-table slots, which depends on the values, the table size and, on collisions, the insertion order; the
    image pivots are inserted first, each kind in descending key-norm order). ``"ascending"``: sorted positions.
    """
    positions = [int(i) for i in image_pivots] + [int(i) for i in text_pivots]
    if order == "set":
        return list(set(positions))
    if order == "ascending":
        return sorted(positions)
    raise ValueError(f"DART pivot order must be one of {DART_PIVOT_ORDERS}, got {order!r}")


def dart_select(
    hidden: torch.Tensor,
    key_norm: torch.Tensor,
    positions: torch.Tensor,
    text_hidden: torch.Tensor,
    text_key_norm: torch.Tensor,
    text_positions: torch.Tensor,
    pivot_image: int,
    pivot_text: int,
    budget: int,
    order: str = "set",
) -> torch.Tensor:
    """DART's duplication-aware selection for one row; returns ascending indices into the ``N`` visual tokens.

    Args:
        hidden: ``[N, D]`` visual tokens after the model's final norm (output of layer ``K-1``).
        key_norm: ``[N]`` L1 norms of their layer ``K-1`` keys.
        positions: ``[N]`` their positions in the (unpadded) prompt sequence: upstream's pivot identifiers, whose
            values decide the ``"set"`` claiming order.
        text_hidden / text_key_norm / text_positions: ``[M, D]`` / ``[M]`` / ``[M]`` the same for the prompt text
            tokens after the image.
        pivot_image / pivot_text: ``p`` / ``q`` pivots, the tokens with the largest key norm of each kind (ties:
            lower index), clipped to what exists: ``p' = min(p, N)``, ``q' = min(q, M)``.
        budget: ``max_num_trunction``; each pivot claims ``k = budget // (p' + q')`` tokens. Upstream divides by
            ``p + q`` (and fails when fewer than ``q`` text tokens follow the image); dividing by the pivots that
            exist keeps the kept count near the budget instead of silently losing ``(q - q') k`` tokens.
        order: the claiming order of the pivots, :func:`dart_pivot_order` (``"set"`` = upstream).

    Every pivot in turn claims the ``k`` not-yet-claimed, non-pivot visual tokens whose hidden state is least
    cosine-similar to its own (fewer when fewer are left). Returns the image pivots plus every claimed token
    (``p' + (p' + q') k`` when enough tokens exist), ascending.
    """
    n = hidden.shape[0]
    p = min(pivot_image, n)
    q = min(pivot_text, text_hidden.shape[0])
    if p + q == 0:
        return torch.zeros(0, dtype=torch.long, device=hidden.device)
    per_pivot = int(budget) // (p + q)
    img_pivots = rank_indices(key_norm[None].float())[0, :p]  # best first, as topk(...).indices
    txt_pivots = rank_indices(text_key_norm[None].float())[0, :q]
    pivot_vector = {int(positions[i]): hidden[i] for i in img_pivots.tolist()}
    pivot_vector.update({int(text_positions[i]): text_hidden[i] for i in txt_pivots.tolist()})
    claim_order = dart_pivot_order(
        positions[img_pivots].tolist(), text_positions[txt_pivots].tolist(), order
    )
    hn = F.normalize(hidden.float(), dim=-1)
    available = torch.ones(n, dtype=torch.bool, device=hidden.device)
    available[img_pivots] = False
    chosen = [img_pivots]
    for position in claim_order:
        left = int(available.sum())
        if left == 0 or per_pivot <= 0:
            break
        sim = hn @ F.normalize(pivot_vector[position].float(), dim=-1)
        sim = sim.masked_fill(~available, float("inf"))
        pick = rank_indices(-sim[None])[0, : min(per_pivot, left)]
        available[pick] = False
        chosen.append(pick)
    return torch.cat(chosen).sort().values



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DARTConfig(LLMPruningMethod):
    """Least-duplicated visual tokens w.r.t. key-norm pivots; dropped before layer ``K``."""

    name: ClassVar[str] = "dart"
    static_cache_refusal: ClassVar[str | None] = (
        "its kept count depends on how many text tokens follow the image (the text pivots come from the prompt)"
    )

    dart_k: int = option(2, "--dart-k", "DART: drop visual tokens before this decoder layer (0-based, >= 1)")
    visual_token_num: int | None = budget_option()
    dart_pivot_image: int = option(
        4, "--dart-pivot-image", "DART: pivot visual tokens p (largest key L1 norm)"
    )
    dart_pivot_text: int = option(4, "--dart-pivot-text", "DART: pivot text tokens q after the image")
    dart_pivot_order: str = option(
        "set",
        "--dart-pivot-order",
        "DART: order in which pivots claim tokens: 'set' (upstream: iteration order of a Python set of their "
        "sequence positions) or 'ascending' (sequence order)",
        choices=DART_PIVOT_ORDERS,
    )
    llm_positions: str = positions_option("original")

    def __post_init__(self) -> None:
        check_int("--dart-k", self.dart_k)
        check_int("--dart-pivot-image", self.dart_pivot_image, 0)
        check_int("--dart-pivot-text", self.dart_pivot_text, 0)
        if self.dart_pivot_image + self.dart_pivot_text == 0:
            raise CompressionConfigError(
                "dart: at least one pivot (--dart-pivot-image / --dart-pivot-text) is needed"
            )
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)
        check_choice("--dart-pivot-order", self.dart_pivot_order, DART_PIVOT_ORDERS)
        check_positions(self.llm_positions)

    @property
    def budget(self) -> int:
        return 128 if self.visual_token_num is None else self.visual_token_num

    @property
    def per_pivot(self) -> int:
        return self.budget // (self.dart_pivot_image + self.dart_pivot_text)

    def kept_count(self) -> int:
        """Tokens kept when the image has enough of them and ``q`` text tokens follow it: ``p + (p + q) k``."""
        return self.dart_pivot_image + (self.dart_pivot_image + self.dart_pivot_text) * self.per_pivot

    def validate(self, geometry: ModelGeometry) -> None:
        self.prune_layers(geometry)
        if self.kept_count() > geometry.num_patches:
            raise CompressionConfigError(
                f"dart: budget {self.budget} with p={self.dart_pivot_image}, q={self.dart_pivot_text} keeps "
                f"{self.kept_count()} tokens, more than the {geometry.num_patches} an image gives"
            )

    def prune_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return check_layers("--dart-k", (self.dart_k,), geometry)

    def trace_extras(self, geometry: ModelGeometry) -> dict[str, Any]:
        return {"dart_kept": self.kept_count()}

    def token_schedule(self, geometry: ModelGeometry, visual_tokens: int | None = None) -> list[int]:
        """Visual tokens entering each decoder layer (the engine's trace convention) for a row whose LLM input holds
        ``visual_tokens`` of them (default ``geometry.num_patches``), when at least ``q`` text tokens follow the image (:meth:`kept_count`)."""
        n = geometry.num_patches if visual_tokens is None else visual_tokens
        return per_layer_counts(geometry.llm_layers, n, [(self.prune_layers(geometry)[0], min(n, self.kept_count()))])

    def select(self, step: PruneStep) -> list[RowSelection | None]:
        keys = step.keys(step.layer - 1)  # [B, H_kv, T, d], post-RoPE
        out: list[RowSelection | None] = []
        for r in range(step.batch_size):
            vis = step.visual_indices(r)
            if vis.numel() == 0:
                out.append(None)
                continue
            text = step.text_after_visual(r)
            norms = key_l1_norm(keys[r])
            # position of each current token in the row's prompt sequence (padding excluded): upstream's pivot ids
            sequence_position = torch.cumsum(step.input_prompt[r].long(), 0) - 1
            position = sequence_position[step.orig_index[r].clamp(min=0)]
            keep = dart_select(
                step.final_norm(step.hidden[r, vis]),
                norms[vis],
                position[vis],
                step.final_norm(step.hidden[r, text]),
                norms[text],
                position[text],
                self.dart_pivot_image,
                self.dart_pivot_text,
                self.budget,
                self.dart_pivot_order,
            )
            out.append(RowSelection(keep=keep))
        return out


register(
    MethodSpec(
        "dart",
        DARTConfig,
        (Stage.LLM,),
        "duplication-aware pivots: keep visual tokens least similar to key-norm pivots, before LLM layer K (DART)",
    )
)
