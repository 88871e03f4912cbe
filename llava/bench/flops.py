"""One FLOPs / KV-cache formula for every compression method: per-layer token counts -> prefill cost.

    python -m llava.bench.flops --model-config llava-1.5-7b --methods all --tokens 64,128,192 [--text-tokens 60]

Counting convention (stated once, used for every method and by the latency harness's "FLOPs-ideal" speedups)
============================================================================================================

Only matrix multiplications are counted, at **2 FLOPs per multiply-accumulate**; norms, activations, softmax, RoPE,
residual adds and top-k are ignored (< 1 % of the total at these sizes). Per sample (one prompt):

* **vision encoder**, per image (crop / frame) and per layer ``l`` with ``a_l`` tokens entering the attention and
  ``m_l`` entering the MLP ([CLS] included; ``a_l = m_l = 577`` for CLIP-L/336 without compression)::

      8 a_l Dv^2  (q, k, v, out)  +  4 a_l^2 Dv  (QK^T and AV)  +  4 m_l Dv Hv  (fc1, fc2)

  plus the patch embedding ``2 N (3 p^2) Dv``. Every encoder layer that runs is counted (HF runs all 24 even though
  LLaVA reads layer 22's output). Video-LLaVA's temporal attention adds ``8 a_l Dv^2 + 4 T a_l Dv`` per frame.
* **projector** (mlp2x_gelu): ``2 n (Dv D + D D)`` for the ``n`` tokens it projects (after a pre-LLM reduction; all
  ``N`` for DivPrune's projected-space variant).
* **LLM decoder**, per layer ``l`` with ``n_l`` tokens entering the attention (= the layer's KV length) and ``u_l``
  entering the MLP (``n_l = u_l`` except FiCoCo-L, which merges between attention and MLP)::

      2 n_l (2 D^2 + 2 D D_kv)  (q, o, k, v)  +  4 n_l^2 D  (QK^T and AV, full square as LLM-Viewer)  +  6 u_l D H  (SwiGLU)

  ``n_l = text + visual_l`` where ``visual_l`` is the method's visual token count at the *input* of layer ``l``
  (the engine's trace convention, merged / recycled tokens included).
* **LM head** for the last prompt position only (``2 D V``; ``generate`` keeps one logit row in prefill).
* **method overhead**: the method's own scoring / selection / merging matmuls (e.g. [CLS] rows, key similarities,
  DivPrune's ``N x N`` distances, recomputed keys of PyramidDrop's next layer, FiCoCo's attention maps).

``convention="llm"`` keeps only the decoder layers (no vision, projector, LM head or overhead): this is what
LLM-Viewer reports and what FiCoCo / FastV-style tables quote. With ``D = 4096, H = 11008, L = 32`` and MHA it is
``F(n) = L [2 n (4 D^2 + 3 D H) + 4 n^2 D]``: 576 visual + 60 text tokens -> 8.45 TFLOPs (published 8.5), and
192 / 128 / 64 visual tokens -> 3.30 / 2.45 / 1.61 TFLOPs (published "3.3 / 2.4 / 1.5"; 1.5 T is 55 visual tokens).

KV cache: ``sum_l 2 n_l D_kv`` values (keys and values of every layer's cached tokens) at ``bytes_per_value``.

Token counts come from the method itself: every config's ``token_schedule(geometry)`` (visual tokens entering each
decoder layer; in-encoder methods also ``encoder_token_schedule(geometry)``), the same schedule the engine's traces
follow. A counter only adds the method's own overhead FLOPs. Adding a method: write a counter
``fn(config, geometry, ctx) -> TokenCounts`` and decorate it with ``@register_counter("name")``; without one the
method is counted from its ``token_schedule`` with zero overhead and a note saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llava.bench.geometries import (
    BenchGeometry,
    available_geometries,
    geometry_for_checkpoint,
    get_geometry,
)
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    ModelGeometry,
    NoCompression,
    Stage,
    available_methods,
    get_method,
    make_config,
)

CONVENTIONS = ("full", "llm")
# vicuna_v1 template: 35 system-prompt tokens precede the image (spec: "the image span starts at index 35")
TEXT_BEFORE_IMAGE = 35


class FlopsError(ValueError):
    """A method / budget / geometry the formula cannot count."""


# -- token counts ----------------------------------------------------------------------------------------------------


@dataclass
class TokenCounts:
    """What a method leaves at every stage of one sample's prefill.

    Attributes:
        method: the method name; images: images (crops / frames) per sample.
        encoder: per encoder layer, ``(tokens into attention, tokens into MLP)`` per image, [CLS] included.
        projector_tokens: tokens through the projector, per sample.
        llm: per LLM layer, ``(visual tokens into attention = cached, visual tokens into MLP)``, per sample.
        overhead_flops: the method's own scoring / selection / merging FLOPs per sample.
        notes: how the counts were obtained when they are approximate.
    """

    method: str
    images: int
    encoder: list[tuple[int, int]]
    projector_tokens: int
    llm: list[tuple[int, int]]
    overhead_flops: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def visual_tokens(self) -> int:
        """Visual tokens at the LLM input."""
        return self.llm[0][0] if self.llm else 0

    @property
    def visual_tokens_per_layer(self) -> list[int]:
        """Visual tokens entering each decoder layer's attention (the engine's trace convention)."""
        return [a for a, _ in self.llm]

    @property
    def avg_visual_tokens(self) -> float:
        """Layer-averaged visual tokens ``T_eq`` (spec Trap 1)."""
        per_layer = self.visual_tokens_per_layer
        return sum(per_layer) / len(per_layer) if per_layer else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "visual_tokens": self.visual_tokens,
            "avg_visual_tokens": round(self.avg_visual_tokens, 2),
            "visual_tokens_per_layer": self.visual_tokens_per_layer,
            "visual_tokens_per_layer_mlp": [u for _, u in self.llm],
            "encoder_tokens_per_layer": [a for a, _ in self.encoder],
            "projector_tokens": self.projector_tokens,
            "overhead_flops": self.overhead_flops,
            "notes": list(self.notes),
        }


@dataclass
class CountContext:
    """What a counter may need besides the config and the geometry.

    text_tokens: prompt tokens that are not visual; observed_visual_tokens: the count a run actually gave the LLM
    (adaptive methods such as PruMerge without a budget), per sample, when known.
    """

    text_tokens: int
    observed_visual_tokens: int | None = None

    @property
    def text_after_image(self) -> int:
        return max(1, self.text_tokens - TEXT_BEFORE_IMAGE)


Counter = Callable[[MethodConfig, BenchGeometry, CountContext], TokenCounts]
_COUNTERS: dict[str, Counter] = {}


def register_counter(*names: str) -> Callable[[Counter], Counter]:
    """Register ``fn(config, geometry, ctx) -> TokenCounts`` for the methods ``names`` (registry names)."""

    def deco(fn: Counter) -> Counter:
        for name in names:
            _COUNTERS[name.lower()] = fn
        return fn

    return deco


def full_encoder(g: BenchGeometry) -> list[tuple[int, int]]:
    return [(g.vision_tokens, g.vision_tokens)] * g.vision_layers


def constant_llm(g: BenchGeometry, visual: int) -> list[tuple[int, int]]:
    return [(visual, visual)] * g.llm_layers


def llm_from_per_layer(per_layer: Sequence[int]) -> list[tuple[int, int]]:
    return [(int(n), int(n)) for n in per_layer]


def _counts(config: MethodConfig, g: BenchGeometry, **kw: Any) -> TokenCounts:
    kw.setdefault("encoder", full_encoder(g))
    kw.setdefault("images", g.images_per_sample)
    return TokenCounts(method=config.name, **kw)


def cls_row_flops(g: BenchGeometry) -> float:
    """One [CLS] attention row of an encoder layer over all heads: ``q_cls . K^T``."""
    return 2.0 * g.vision_tokens * g.vision_hidden


# -- pre-LLM methods -------------------------------------------------------------------------------------------------


def _per_image_budget(config: MethodConfig, g: BenchGeometry, ctx: CountContext) -> int:
    """Visual tokens one image gives the LLM: the method's own :meth:`token_schedule`, or the observed count when
    the method's count is image-dependent (``None``) or only steered by its budget (``budget_is_approximate``)."""
    schedule = config.token_schedule(g.compression_geometry())
    t = schedule[0] if schedule else None
    if t is not None and getattr(config, "budget_is_approximate", False) and ctx.observed_visual_tokens is not None:
        t = None  # the budget only steers the count (PruMerge+'s VTC-CLS rule): count what the run gave the LLM
    if t is None:
        if ctx.observed_visual_tokens is None:
            raise FlopsError(
                f"{config.name} without --visual-token-num keeps an image-dependent count; pass visual_tokens"
            )
        return max(1, round(ctx.observed_visual_tokens / g.images_per_sample))
    return int(t)


def _pre_llm(config, g, ctx, overhead_per_image: float, projector_per_image: int | None = None, notes=()):
    k = _per_image_budget(config, g, ctx)
    n = g.images_per_sample
    return _counts(
        config,
        g,
        projector_tokens=n * (k if projector_per_image is None else projector_per_image),
        llm=constant_llm(g, n * k),
        overhead_flops=n * overhead_per_image,
        notes=list(notes),
    )


@register_counter("none")
def _none(config, g, ctx):
    return _counts(config, g, projector_tokens=g.projected_tokens, llm=constant_llm(g, g.visual_tokens))


@register_counter("fastervlm")
def _fastervlm(config, g, ctx):
    return _pre_llm(config, g, ctx, cls_row_flops(g))


@register_counter("vtc-cls")
def _vtc_cls(config, g, ctx):
    layers = len(config.probe_layers(g.compression_geometry()))
    return _pre_llm(config, g, ctx, layers * cls_row_flops(g))


@register_counter("random", "pool")
def _free_selection(config, g, ctx):
    return _pre_llm(config, g, ctx, 0.0)


@register_counter("prumerge", "prumerge+")
def _prumerge(config, g, ctx):
    k = _per_image_budget(config, g, ctx)
    n, c = g.patches_per_image, g.vision_hidden
    centres = max(1, k - 1)
    m = min(config.prumerge_knn, n - 1)
    # [CLS] row (single full-width head) + centre x all key cosines + kNN merge + the extra token's weighted sum
    overhead = cls_row_flops(g) + 2.0 * centres * n * c + 2.0 * centres * m * c + 2.0 * n * c
    return _pre_llm(config, g, ctx, overhead)


@register_counter("visionzip")
def _visionzip(config, g, ctx):
    n, c, d = g.patches_per_image, g.vision_hidden, g.vision_head_dim
    rest = n - config.dominant_patches
    ctxt = config.contextual
    # [CLS] row + (remaining - targets) x targets cosines on head-mean keys + the merge sums
    overhead = cls_row_flops(g) + 2.0 * max(0, rest - ctxt) * ctxt * d + 2.0 * rest * c
    return _pre_llm(config, g, ctx, overhead)


@register_counter("divprune")
def _divprune(config, g, ctx):
    k = _per_image_budget(config, g, ctx)
    n = g.patches_per_image
    projected = config.divprune_space == "projected"
    width = g.llm_hidden if projected or g.is_qwen else g.vision_hidden  # Qwen: on the merged (LLM-width) tokens
    # N x N cosine distances + k greedy max-min sweeps over N (comparisons, counted as 2 k N)
    overhead = 2.0 * n * n * width + 2.0 * k * n
    return _pre_llm(
        config,
        g,
        ctx,
        overhead,
        projector_per_image=n if projected else k,
        notes=["projects all patches (projected-space distances)"] if projected else [],
    )


# -- in-encoder merging ----------------------------------------------------------------------------------------------


def _vision_encoder(config, g, ctx, overhead_fn: Callable[[int, int], float] | None, notes=()):
    geometry = g.compression_geometry()
    encoder = config.encoder_token_schedule(geometry)  # per layer (attention, MLP) tokens, [CLS] included
    k = config.token_schedule(geometry)[0]  # patches out of the feature layer ([CLS] dropped)
    per_image = 0.0
    if overhead_fn is not None:
        per_image = sum(overhead_fn(a, a - m) for a, m in encoder if a > m)
    n = g.images_per_sample
    return _counts(
        config,
        g,
        encoder=encoder,
        projector_tokens=n * k,
        llm=constant_llm(g, n * k),
        overhead_flops=n * per_image,
        notes=list(notes),
    )


@register_counter("tome")
def _tome(config, g, ctx):
    d, c = g.vision_head_dim, g.vision_hidden

    def per_layer(a: int, r: int) -> float:
        half = a // 2
        # A x B cosines on head-mean keys + size-weighted merge
        return 2.0 * half * (a - half) * d + 4.0 * a * c

    return _vision_encoder(config, g, ctx, per_layer)


def ficoco_v_layer_flops(g: BenchGeometry, a: int, r: int) -> float:
    """FiCoCo-V's own work in one merging encoder layer with ``a`` tokens, ``r`` sources: the head-mean attention
    map (``QK^T`` of every head, ``a x a``) and the compress step (``alpha^T x_S``)."""
    return 2.0 * a * a * g.vision_hidden + 2.0 * r * (a - r) * g.vision_hidden


# -- in-LLM methods --------------------------------------------------------------------------------------------------


def llm_geometry(g: BenchGeometry) -> ModelGeometry:
    """The registry geometry in-LLM configs see: all of a sample's visual tokens form one span."""
    return dataclasses.replace(g.compression_geometry(), num_patches=g.visual_tokens)


def _row_flops(g: BenchGeometry, queries: int, keys: int, recompute_keys: bool) -> float:
    """Attention rows of ``queries`` tokens against ``keys`` tokens from a layer's own q (and k) projections."""
    f = 2.0 * queries * g.llm_hidden * g.llm_hidden + 2.0 * queries * keys * g.llm_hidden
    if recompute_keys:
        f += 2.0 * keys * g.llm_hidden * g.llm_kv_width
    return f


@register_counter("fastv")
def _fastv(config, g, ctx):
    n = g.visual_tokens
    per_layer = config.token_schedule(llm_geometry(g))
    # layer K-1's keys come from the cache; one query row
    overhead = _row_flops(g, 1, n + ctx.text_tokens, recompute_keys=False)
    return _counts(config, g, projector_tokens=n, llm=llm_from_per_layer(per_layer), overhead_flops=overhead)


@register_counter("pdrop")
def _pdrop(config, g, ctx):
    geo = llm_geometry(g)
    layers = config.prune_layers(geo)
    n = g.visual_tokens
    per_layer = config.token_schedule(geo)
    # at every boundary: the next layer's keys are recomputed (not cached yet) + the last token's query row
    overhead = sum(
        _row_flops(g, 1, per_layer[k - 1] + ctx.text_tokens, recompute_keys=True) for k in layers
    )
    return _counts(config, g, projector_tokens=n, llm=llm_from_per_layer(per_layer), overhead_flops=overhead)


@register_counter("sparsevlm")
def _sparsevlm(config, g, ctx):
    geo = llm_geometry(g)
    n = g.visual_tokens
    per_layer = config.token_schedule(geo)
    text_after = ctx.text_after_image
    raters = max(1, text_after // 2)  # text tokens above the mean relevance: about half (estimate)
    overhead = 0.0
    for k, count in zip(config.prune_layers(geo), config.counts):
        cur = per_layer[k - 1]
        pruned = cur - min(count, cur - 1)
        overhead += 2.0 * cur * text_after * g.llm_hidden  # raters: V T^T on the input embeddings, every step
        overhead += _row_flops(g, raters, cur + ctx.text_tokens, recompute_keys=False)
        m = min(pruned, int(pruned * 0.3) + 1)
        overhead += 2.0 * m * m * g.llm_hidden  # DPC-kNN distances of the recycled candidates
    return _counts(
        config,
        g,
        projector_tokens=n,
        llm=llm_from_per_layer(per_layer),
        overhead_flops=overhead,
        notes=["rater count estimated as half the text after the image"],
    )


@register_counter("dart")
def _dart(config, g, ctx):
    n = g.visual_tokens
    per_layer = config.token_schedule(llm_geometry(g))
    pivots = config.dart_pivot_image + config.dart_pivot_text
    # keys from the cache; final norm of the visual + text tokens is elementwise; pivot cosines
    overhead = 2.0 * pivots * n * g.llm_hidden
    return _counts(config, g, projector_tokens=n, llm=llm_from_per_layer(per_layer), overhead_flops=overhead)


# -- FiCoCo ------------------------------------------------------------------------------------------------------------


def ficoco_l_step_flops(g: BenchGeometry, visual: int, text: int, text_after: int, r: int) -> float:
    """FiCoCo-L's own work before one merging decoder layer with ``visual`` visual tokens, ``r`` sources: the
    head-mean attention of the visual + following text tokens over the whole sequence (their queries are layer
    ``K-1``'s own ``q_proj`` outputs, captured from its forward, and the keys come from the cache: no projection is
    recomputed), the text-bridged correlation ``N x M x N`` and the compress step."""
    q = visual + text_after
    d = g.llm_hidden
    return (
        2.0 * q * (visual + text) * d
        + 2.0 * visual * text_after * visual
        + 2.0 * r * (visual - r) * d
    )


def _ficoco_llm(config, g: BenchGeometry, ctx: CountContext, n0: int) -> tuple[list[int], float]:
    """Per-layer visual counts and overhead of a ``ficoco-l`` / ``ficoco-vl`` config whose LLM input has ``n0``
    visual tokens (the method's :meth:`token_schedule`; every drop between two layers is one merge step)."""
    per_layer = config.token_schedule(llm_geometry(g), n0)
    overhead = sum(
        ficoco_l_step_flops(g, before, ctx.text_tokens, ctx.text_after_image, before - after)
        for before, after in zip(per_layer, per_layer[1:])
        if after < before
    )
    return per_layer, overhead


@register_counter("ficoco-v")
def _ficoco_v(config, g, ctx):
    return _vision_encoder(config, g, ctx, lambda a, r: ficoco_v_layer_flops(g, a, r))


@register_counter("ficoco-l")
def _ficoco_l(config, g, ctx):
    n0 = g.visual_tokens
    per_layer, overhead = _ficoco_llm(config, g, ctx, n0)
    return _counts(config, g, projector_tokens=n0, llm=llm_from_per_layer(per_layer), overhead_flops=overhead)


@register_counter("ficoco-vl")
def _ficoco_vl(config, g, ctx):
    counts = _vision_encoder(config, g, ctx, lambda a, r: ficoco_v_layer_flops(g, a, r))
    per_layer, overhead = _ficoco_llm(config, g, ctx, counts.visual_tokens)
    counts.llm = llm_from_per_layer(per_layer)
    counts.overhead_flops += overhead
    return counts


# -- generic fallbacks -------------------------------------------------------------------------------------------------


def _fallback(config: MethodConfig, g: BenchGeometry, ctx: CountContext) -> TokenCounts:
    stages = get_method(config.name).stages
    note = f"{config.name}: no token counter registered; counted from its config with zero overhead"
    has_schedule = hasattr(config, "token_schedule")
    if has_schedule and stages == (Stage.VISION_ENCODER,):
        return _vision_encoder(config, g, ctx, None, notes=[note])
    if has_schedule and stages == (Stage.PRE_LLM,):
        return _pre_llm(config, g, ctx, 0.0, notes=[note])
    if has_schedule and stages == (Stage.LLM,):
        n = g.visual_tokens
        per_layer = config.token_schedule(llm_geometry(g))
        return _counts(config, g, projector_tokens=n, llm=llm_from_per_layer(per_layer), notes=[note])
    raise FlopsError(
        f"no token counter for method {config.name!r}; register one with @llava.bench.flops.register_counter"
    )


# -- building configs ------------------------------------------------------------------------------------------------


def build_config(
    method: str | MethodConfig,
    geometry: BenchGeometry,
    method_args: dict[str, Any] | None = None,
    visual_tokens: int | None = None,
) -> MethodConfig:
    """A validated config for ``geometry``. ``method_args`` may be a results file's ``method_args`` (keys that are
    not config fields, e.g. VisionZip's derived ``dominant``, are ignored); ``visual_tokens`` fills a pre-LLM or
    in-encoder method's ``visual_token_num`` (per image) when ``method_args`` leaves it unset."""
    if isinstance(method, MethodConfig):
        return method
    spec = get_method(method)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    given = {k.replace("-", "_"): v for k, v in (method_args or {}).items()}
    args = {k: v for k, v in given.items() if k in fields and v is not None}
    pre = Stage.LLM not in spec.stages
    # a results file's method_args list every field: visual_token_num=None there means "the method chose"
    if visual_tokens is not None and pre and "visual_token_num" in fields and "visual_token_num" not in given:
        args["visual_token_num"] = max(1, round(visual_tokens / geometry.images_per_sample))
    geo = geometry.compression_geometry() if pre else llm_geometry(geometry)
    if geometry.is_qwen and spec.stages:  # what the Qwen2.5-VL family runs (no [CLS], no in-encoder merging)
        from llava.compression.families import get_family

        reason = get_family("qwen2.5-vl").refusal(spec)
        if reason is not None:
            raise FlopsError(reason)
    try:
        return make_config(spec.name, geo, **args)
    except CompressionConfigError as err:
        raise FlopsError(str(err)) from None


def token_counts(
    method: str | MethodConfig,
    geometry: BenchGeometry | str,
    method_args: dict[str, Any] | None = None,
    visual_tokens: int | None = None,
    text_tokens: int | None = None,
) -> TokenCounts:
    """Per-layer token counts of ``method`` on ``geometry`` (see :class:`TokenCounts`)."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    config = build_config(method, g, method_args, visual_tokens)
    ctx = CountContext(
        text_tokens=g.text_tokens if text_tokens is None else int(text_tokens),
        observed_visual_tokens=visual_tokens,
    )
    counter = _COUNTERS.get(config.name.lower(), _fallback)
    try:
        return counter(config, g, ctx)
    except CompressionConfigError as err:
        raise FlopsError(str(err)) from None


# -- FLOPs -----------------------------------------------------------------------------------------------------------


@dataclass
class FlopsBreakdown:
    """Prefill FLOPs of one sample by component (see the module docstring for what each counts)."""

    vision: float
    projector: float
    llm: float
    lm_head: float
    method: float
    counts: TokenCounts
    text_tokens: int

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.llm + self.lm_head + self.method

    def value(self, convention: str = "full") -> float:
        if convention == "full":
            return self.total
        if convention == "llm":
            return self.llm
        raise FlopsError(f"unknown FLOPs convention {convention!r}; choose one of {CONVENTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision": self.vision,
            "projector": self.projector,
            "llm": self.llm,
            "lm_head": self.lm_head,
            "method_overhead": self.method,
            "total": self.total,
            "text_tokens": self.text_tokens,
            **self.counts.to_dict(),
        }


def vision_layer_flops(g: BenchGeometry, attn_tokens: int, mlp_tokens: int) -> float:
    c = g.vision_hidden
    f = 8.0 * attn_tokens * c * c + 4.0 * attn_tokens * attn_tokens * c + 4.0 * mlp_tokens * c * g.vision_intermediate
    if g.temporal_frames > 1:  # LanguageBind: attention over the frames at every token position
        f += 8.0 * attn_tokens * c * c + 4.0 * g.temporal_frames * attn_tokens * c
    return f


def window_sizes(g: BenchGeometry) -> list[int]:
    """Qwen2.5-VL: patches in each attention window of one image (windows of ``window_size`` px, i.e. ``s x s``
    merged tokens, tiled from the top-left corner; the last row / column of windows is cut by the image edge)."""
    rows, cols = g.grid
    side = max(1, g.window_size // (g.patch_size * g.merge_size))
    spans = [[min(side, n - start) for start in range(0, n, side)] for n in (rows, cols)]
    return [r * c * g.merge_size**2 for r in spans[0] for c in spans[1]]


def qwen_vision_flops(g: BenchGeometry) -> float:
    """One image through a Qwen2.5-VL tower: Conv3d patch embedding, per block ``8 N Dv^2`` (qkv, proj) + attention
    (``4 N^2 Dv`` in a full-attention block, ``4 sum_w n_w^2 Dv`` over its windows in a windowed one) + SwiGLU
    ``6 N Dv Hv``; the merger is counted as the projector."""
    n, c = g.vision_tokens, g.vision_hidden
    windows = sum(w * w for w in window_sizes(g))
    full = g.full_attention_layers
    dense = g.vision_layers * (8.0 * n * c * c + 6.0 * n * c * g.vision_intermediate)
    attention = 4.0 * c * (full * n * n + (g.vision_layers - full) * windows)
    patch_embed = 2.0 * n * 3 * g.temporal_patch_size * g.patch_size**2 * c
    return patch_embed + dense + attention


def vision_flops(g: BenchGeometry, encoder: Sequence[tuple[int, int]] | None = None) -> float:
    """Vision-encoder FLOPs of one sample (all its images)."""
    if g.is_qwen:
        return g.images_per_sample * qwen_vision_flops(g)
    encoder = full_encoder(g) if encoder is None else encoder
    patch_embed = 2.0 * g.patches_per_image * 3 * g.patch_size**2 * g.vision_hidden
    return g.images_per_sample * (patch_embed + sum(vision_layer_flops(g, a, m) for a, m in encoder))


def projector_flops(g: BenchGeometry, tokens: int) -> float:
    if g.is_qwen:  # the merger (an MLP on every merge^2 patches) runs before any pre-LLM method: all tokens
        wide = g.vision_hidden * g.merge_size**2
        return 2.0 * g.projected_tokens * (wide * wide + wide * g.llm_hidden)
    return 2.0 * tokens * (g.vision_hidden * g.llm_hidden + (g.projector_layers - 1) * g.llm_hidden**2)


def llm_layer_flops(g: BenchGeometry, attn_tokens: int, mlp_tokens: int | None = None, kv_tokens: int | None = None) -> float:
    """One decoder layer: ``attn_tokens`` queries (and as many keys unless ``kv_tokens``), ``mlp_tokens`` MLP rows."""
    d = g.llm_hidden
    mlp_tokens = attn_tokens if mlp_tokens is None else mlp_tokens
    kv = attn_tokens if kv_tokens is None else kv_tokens
    proj = 2.0 * attn_tokens * (2 * d * d + 2 * d * g.llm_kv_width)
    attn = 4.0 * attn_tokens * kv * d
    mlp = 6.0 * mlp_tokens * d * g.llm_intermediate
    return proj + attn + mlp


def llm_flops(g: BenchGeometry, counts: TokenCounts, text_tokens: int) -> float:
    return sum(llm_layer_flops(g, a + text_tokens, u + text_tokens) for a, u in counts.llm)


def lm_head_flops(g: BenchGeometry, positions: int = 1) -> float:
    return 2.0 * positions * g.llm_hidden * g.vocab_size


def breakdown(counts: TokenCounts, g: BenchGeometry, text_tokens: int | None = None) -> FlopsBreakdown:
    text = g.text_tokens if text_tokens is None else int(text_tokens)
    return FlopsBreakdown(
        vision=vision_flops(g, counts.encoder),
        projector=projector_flops(g, counts.projector_tokens),
        llm=llm_flops(g, counts, text),
        lm_head=lm_head_flops(g),
        method=counts.overhead_flops,
        counts=counts,
        text_tokens=text,
    )


def flops_breakdown(
    method: str | MethodConfig = "none",
    geometry: BenchGeometry | str = "llava-1.5-7b",
    method_args: dict[str, Any] | None = None,
    visual_tokens: int | None = None,
    text_tokens: int | None = None,
) -> FlopsBreakdown:
    """Prefill FLOPs of one sample by component, for ``method`` with ``method_args`` on ``geometry``."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    counts = token_counts(method, g, method_args, visual_tokens, text_tokens)
    return breakdown(counts, g, text_tokens)


def prefill_flops(
    visual_tokens: int | None = None,
    method: str | MethodConfig = "none",
    method_args: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    benchmark: str | None = None,
    *,
    geometry: BenchGeometry | str | None = None,
    text_tokens: int | None = None,
    convention: str = "full",
) -> float:
    """Prefill FLOPs of one sample (the signature ``llava.eval.summarize`` calls).

    Args:
        visual_tokens: visual tokens the LLM got per sample (a results file's ``visual_tokens``); fills a pre-LLM
            method's budget when ``method_args`` leave it unset, and is PruMerge's count when it chose its own.
        method / method_args: registry name and arguments (a results file's ``method_args``).
        checkpoint: a checkpoint name or folder, mapped to a geometry (:func:`geometry_for_checkpoint`);
            ``geometry`` (a :class:`BenchGeometry` or a name) overrides it; neither -> LLaVA-1.5-7B.
        benchmark: unused (the text length is the convention's, ``text_tokens``, default 60).
        convention: ``"full"`` (default: vision + projector + LLM + LM head + method overhead) or ``"llm"`` (decoder
            layers only: the LLM-Viewer numbers papers quote).

    Raises:
        FlopsError: unknown method / geometry or a budget the method cannot take.
    """
    del benchmark
    if convention not in CONVENTIONS:
        raise FlopsError(f"unknown FLOPs convention {convention!r}; choose one of {CONVENTIONS}")
    if geometry is not None:
        g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    elif checkpoint is not None:
        try:
            g = geometry_for_checkpoint(checkpoint)
        except KeyError as err:
            raise FlopsError(str(err)) from None
    else:
        g = get_geometry("llava-1.5-7b")
    return flops_breakdown(method, g, method_args, visual_tokens, text_tokens).value(convention)


# -- LLM-Viewer closed form, KV cache, decode --------------------------------------------------------------------------


def llm_viewer_flops(total_tokens: int, geometry: BenchGeometry | str = "llava-1.5-7b") -> float:
    """``L [2 n (2 D^2 + 2 D D_kv + 3 D H) + 4 n^2 D]``: decoder FLOPs for ``n`` tokens in every layer."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    return g.llm_layers * llm_layer_flops(g, total_tokens)


def visual_tokens_for_flops(
    target: float, geometry: BenchGeometry | str = "llava-1.5-7b", text_tokens: int | None = None
) -> int:
    """The visual-token count (kept in every layer) whose LLM-Viewer FLOPs are closest to ``target``."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    text = g.text_tokens if text_tokens is None else text_tokens
    lo, hi = 0, g.visual_tokens
    while lo < hi:
        mid = (lo + hi) // 2
        if llm_viewer_flops(mid + text, g) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [v for v in (lo - 1, lo) if 0 <= v <= g.visual_tokens]
    return min(candidates, key=lambda v: abs(llm_viewer_flops(v + text, g) - target))


def kv_cache_bytes(
    counts: TokenCounts,
    geometry: BenchGeometry | str,
    text_tokens: int | None = None,
    bytes_per_value: int = 2,
    batch_size: int = 1,
    include_text: bool = True,
) -> int:
    """KV-cache bytes after prefill: ``sum_l 2 n_l D_kv`` values per sample (``include_text=False``: visual tokens
    only, FasterVLM's "Storage" column)."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    text = (g.text_tokens if text_tokens is None else int(text_tokens)) if include_text else 0
    values = sum(2 * (a + text) * g.llm_kv_width for a, _ in counts.llm)
    return int(values * bytes_per_value * batch_size)


def decode_flops(
    counts: TokenCounts, geometry: BenchGeometry | str, text_tokens: int | None = None, generated: int = 0
) -> float:
    """FLOPs of one decode step (one new token) after ``generated`` earlier new tokens: every layer's projections
    and MLP for one token, its attention over that layer's cache, and the LM head."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    text = g.text_tokens if text_tokens is None else int(text_tokens)
    return sum(llm_layer_flops(g, 1, 1, kv_tokens=a + text + generated + 1) for a, _ in counts.llm) + lm_head_flops(g)


def parameter_count(geometry: BenchGeometry | str) -> dict[str, int]:
    """Weights of the vision tower, projector and LLM (embeddings and LM head included), biases included."""
    g = get_geometry(geometry) if isinstance(geometry, str) else geometry
    c, hv = g.vision_hidden, g.vision_intermediate
    if g.is_qwen:
        return _qwen_parameter_count(g)
    vision_layer = 4 * (c * c + c) + (c * hv + hv) + (hv * c + c) + 4 * c
    vision = g.vision_layers * vision_layer + 3 * g.patch_size**2 * c + (g.vision_tokens + 1) * c + 4 * c
    d = g.llm_hidden
    projector = (c * d + d) + (g.projector_layers - 1) * (d * d + d)
    llm_layer = 2 * d * d + 2 * d * g.llm_kv_width + 3 * d * g.llm_intermediate + 2 * d
    llm = g.llm_layers * llm_layer + 2 * g.vocab_size * d + d
    return {"vision": vision, "projector": projector, "llm": llm, "total": vision + projector + llm}


def _qwen_parameter_count(g: BenchGeometry) -> dict[str, int]:
    """Qwen2.5-VL: blocks with qkv / proj and a SwiGLU MLP (all with biases) and two RMSNorms, a Conv3d patch
    embedding without bias; the merger (RMSNorm + two linears) as the projector; a Qwen2 decoder (q / k / v biases,
    untied LM head)."""
    c, hv, d = g.vision_hidden, g.vision_intermediate, g.llm_hidden
    block = (3 * c * c + 3 * c) + (c * c + c) + 2 * (c * hv + hv) + (hv * c + c) + 2 * c
    vision = g.vision_layers * block + 3 * g.temporal_patch_size * g.patch_size**2 * c
    wide = c * g.merge_size**2
    projector = c + (wide * wide + wide) + (wide * d + d)
    llm_layer = 2 * d * d + 2 * d * g.llm_kv_width + d + 2 * g.llm_kv_width + 3 * d * g.llm_intermediate + 2 * d
    llm = g.llm_layers * llm_layer + 2 * g.vocab_size * d + d
    return {"vision": vision, "projector": projector, "llm": llm, "total": vision + projector + llm}


# -- budgets -----------------------------------------------------------------------------------------------------------

# What "T visual tokens" means for each method when a table sweeps budgets (each method's own --visual-token-num
# semantics; the table reports the layer-averaged count beside it so settings can be compared). T is per sample:
#   pre-LLM / ToMe / FiCoCo-V / FiCoCo-VL: T / images per image (T tokens at the LLM input; FiCoCo-VL: in its last
#   decoder layer); FastV / DART: T kept from the pruning layer on; PyramidDrop: layer-averaged T with the author's
#   small-budget layers 2,8,16; SparseVLM: the v1.5 preset T; FiCoCo-L: T in the last decoder layer.
BUDGET_EXTRA_ARGS: dict[str, dict[str, Any]] = {"pdrop": {"pdrop_layers": "2,8,16"}}
# decoder-layer fields of in-LLM methods and whether the layer named prunes its *output* (SparseVLM)
LAYER_ARGS = {
    "fastv_k": False,
    "dart_k": False,
    "pdrop_layers": False,
    "sparsevlm_layers": True,
    "ficoco_start_layer": False,
    "ficoco_llm_start_layer": False,
}


def budget_args(
    method: str,
    budget: int,
    reference_layers: int | None = None,
    llm_layers: int | None = None,
    images: int = 1,
) -> dict[str, Any]:
    """Arguments that set ``method`` to ``budget`` visual tokens per sample (see ``BUDGET_EXTRA_ARGS``' comment).

    With ``llm_layers < reference_layers`` (a shortened latency model) the in-LLM layer indices are scaled to the
    shorter decoder (``round(K * L' / L)``, at least 1, strictly increasing, below ``L'``; stages that no longer fit
    are dropped, and SparseVLM keeps the first counts of its preset).
    """
    spec = get_method(method)
    if spec.config_cls is NoCompression:
        return {}
    fields = {f.name: f.default for f in dataclasses.fields(spec.config_cls)}
    per_sample = spec.stages == (Stage.LLM,)
    args: dict[str, Any] = {"visual_token_num": budget if per_sample else max(1, round(budget / images))}
    args.update(BUDGET_EXTRA_ARGS.get(spec.name, {}))
    if reference_layers and llm_layers and llm_layers < reference_layers and Stage.LLM in spec.stages:
        for name, output_side in LAYER_ARGS.items():
            if name not in fields or (name == "ficoco_start_layer" and Stage.VISION_ENCODER in spec.stages):
                continue
            args[name] = _scale_layers(args.get(name, fields[name]), reference_layers, llm_layers, output_side)
        if spec.name == "sparsevlm":
            from llava.compression.methods.sparsevlm import SPARSEVLM_V15_COUNTS

            preset = SPARSEVLM_V15_COUNTS.get(budget)
            if preset is not None:
                kept = len(str(args["sparsevlm_layers"]).split(","))
                args.pop("visual_token_num")
                args["sparsevlm_counts"] = ",".join(map(str, preset[:kept]))
    return args


def _scale_layers(value: Any, reference: int, layers: int, output_side: bool = False) -> Any:
    items = [int(v) for v in str(value).split(",")] if isinstance(value, str) else [int(value)]
    low, high = (0, layers - 2) if output_side else (1, layers - 1)
    out: list[int] = []
    for k in items:
        scaled = min(high, max(low, round(k * layers / reference)))
        if out and scaled <= out[-1]:
            scaled = out[-1] + 1
        if scaled > high:
            break
        out.append(scaled)
    if isinstance(value, str):
        return ",".join(map(str, out))
    return out[0]


def sweep_methods(names: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every registered method (``none`` first); otherwise the comma-separated names, validated."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if list(names) == ["all"]:
        return ["none"] + [m for m in available_methods() if m != "none"]
    return [get_method(n).name for n in names]


def table_rows(
    geometry: BenchGeometry,
    methods: Sequence[str],
    budgets: Sequence[int],
    text_tokens: int | None = None,
    bytes_per_value: int = 2,
) -> list[dict[str, Any]]:
    """One row per (method, budget) with the FLOPs breakdown, LLM-Viewer FLOPs, KV bytes and token counts.

    Methods that cannot take a budget on this geometry give a row with ``error`` set.
    """
    rows = []
    base = flops_breakdown("none", geometry, text_tokens=text_tokens)
    for method in methods:
        for budget in [None] if get_method(method).config_cls is NoCompression else budgets:
            args = budget_args(method, budget, images=geometry.images_per_sample) if budget is not None else {}
            row: dict[str, Any] = {"method": method, "budget": budget, "method_args": args}
            try:
                b = flops_breakdown(method, geometry, args, text_tokens=text_tokens)
            except FlopsError as err:
                row["error"] = str(err)
                rows.append(row)
                continue
            row.update(
                breakdown=b.to_dict(),
                tflops=b.total / 1e12,
                tflops_llm=b.llm / 1e12,
                ideal_speedup=base.total / b.total,
                kv_mb=kv_cache_bytes(b.counts, geometry, b.text_tokens, bytes_per_value) / 1e6,
                avg_visual_tokens=b.counts.avg_visual_tokens,
                visual_tokens=b.counts.visual_tokens,
            )
            rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| method | budget | LLM input tokens | avg tokens/layer | TFLOPs (full) | TFLOPs (LLM only) | overhead GFLOPs "
        "| KV MB | ideal speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        budget = "" if r["budget"] is None else r["budget"]
        if "error" in r:
            lines.append(f"| {r['method']} | {budget} | n/a: {r['error'][:80]} | | | | | | |")
            continue
        b = r["breakdown"]
        lines.append(
            f"| {r['method']} | {budget} | {r['visual_tokens']} | {r['avg_visual_tokens']:.1f} | {r['tflops']:.3f} "
            f"| {r['tflops_llm']:.3f} | {b['method_overhead'] / 1e9:.2f} | {r['kv_mb']:.1f} | {r['ideal_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llava.bench.flops",
        description="Prefill FLOPs, KV-cache size and per-layer visual tokens per method and budget.",
    )
    p.add_argument("--model-config", default="llava-1.5-7b", help=f"one of {', '.join(available_geometries())}")
    p.add_argument("--methods", default="all", help="comma-separated method names or 'all'")
    p.add_argument("--tokens", default="64,128,192", help="comma-separated budgets")
    p.add_argument("--text-tokens", type=int, default=None, help="non-visual prompt tokens (default 60)")
    p.add_argument("--kv-bytes", type=int, default=2, help="bytes per cached value (2 = fp16/bf16)")
    p.add_argument("--image-size", default=None, metavar="HxW",
                   help="LLaVA-NeXT / Qwen2.5-VL: count one image of this size (height x width px), e.g. 480x640")
    p.add_argument("--max-pixels", type=int, default=28 * 28 * 1280,
                   help="Qwen2.5-VL with --image-size: the processor's max_pixels (default 28*28*1280)")
    p.add_argument("--next-grid", default="anyres", choices=["anyres", "fixed-672"],
                   help="LLaVA-NeXT with --image-size: anyres (LLaVA-1.6's real count) | fixed-672 (2880)")
    args = p.parse_args(argv)
    try:
        geometry = get_geometry(args.model_config)
        if args.image_size is not None and geometry.is_qwen:
            geometry = _qwen_image_geometry(geometry, args.image_size, args.max_pixels)
        elif args.image_size is not None:
            geometry = _next_image_geometry(geometry, args.image_size, args.next_grid)
        methods = sweep_methods(args.methods)
        budgets = [int(t) for t in args.tokens.split(",") if t.strip()]
    except (KeyError, ValueError, CompressionConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = table_rows(geometry, methods, budgets, args.text_tokens, args.kv_bytes)
    text = args.text_tokens if args.text_tokens is not None else geometry.text_tokens
    print(f"{geometry.name}: {geometry.description}; {text} text tokens; FLOPs per sample (module docstring)\n")
    print(markdown_table(rows), end="")
    return 0


def _parse_image_size(image_size: str) -> tuple[int, int]:
    parts = image_size.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size {image_size!r}: give height x width in pixels, e.g. 480x640")
    return int(parts[0]), int(parts[1])


def _qwen_image_geometry(geometry: BenchGeometry, image_size: str, max_pixels: int) -> BenchGeometry:
    """``geometry`` (a Qwen2.5-VL one) for one image of ``image_size`` = ``"HxW"`` at ``max_pixels``."""
    from llava.bench.geometries import qwen_geometry_for_image

    return qwen_geometry_for_image(_parse_image_size(image_size), base=geometry, max_pixels=max_pixels)


def _next_image_geometry(geometry: BenchGeometry, image_size: str, mode: str) -> BenchGeometry:
    """``geometry`` (a LLaVA-NeXT one) for one image of ``image_size`` = ``"HxW"``."""
    from llava.bench.geometries import LLAVA_NEXT_7B, next_geometry_for_image

    if geometry.name != LLAVA_NEXT_7B.name:
        raise ValueError(f"--image-size applies to LLaVA-NeXT geometries only ({LLAVA_NEXT_7B.name}), "
                         f"not {geometry.name}")
    parts = image_size.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size {image_size!r}: give height x width in pixels, e.g. 480x640")
    return next_geometry_for_image((int(parts[0]), int(parts[1])), mode, base=geometry)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CONVENTIONS",
    "FlopsBreakdown",
    "FlopsError",
    "TokenCounts",
    "breakdown",
    "budget_args",
    "build_config",
    "decode_flops",
    "flops_breakdown",
    "kv_cache_bytes",
    "llm_viewer_flops",
    "parameter_count",
    "prefill_flops",
    "register_counter",
    "token_counts",
    "visual_tokens_for_flops",
]
