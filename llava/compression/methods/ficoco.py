"""FiCoCo-V / FiCoCo-L / FiCoCo-VL (arXiv 2411.17686 v4, "Filter, Correlate, Compress"): progressive token merging.

Every merging layer runs the three stages (the pure functions below) on the layer's own attention (softmax
probabilities averaged over heads, computed from the layer's queries and keys; the attention backend is never
switched): **Filter** scores redundancy and picks the ``r`` most redundant tokens, **Correlate** links each of them
to the preserved tokens it is most correlated with (``eps``-quantile targets, ``eps = 0.998``), **Compress** folds
it into them with the self-preserving weighted average of Eq. 2.

* ``ficoco-v`` - inside the CLIP encoder, in encoder layers ``start .. F`` (0-based; default ``start = 12``, the
  released code's "idx > 11"; ``F`` = the feature layer, 22 for LLaVA-1.5: later merges cannot reach the LLM),
  after the attention residual and before the MLP. Redundancy ``lam * (attention received from patches) -
  (1 - lam) * ([CLS] attention)`` with ``lam = 0.35``, plus the 2x2 local penalty recomputed for every image on its
  current tokens; correlation = attention from the discarded to the preserved patches. [CLS] stays at index 0,
  patches stay in raster order, every token's size (patches it stands for) is tracked.
* ``ficoco-l`` - inside the LLM through the in-LLM engine (``families/decoder_pruning.py``: per-layer KV lengths,
  kept tokens keep their original position ids, batches with left padding, visual tokens located from the real
  image positions). Merges happen *between* decoder layers: before every layer ``K = start .. L-1`` (default
  ``start = 4``: layers 0-3 see every visual token), using layer ``K-1``'s causal attention; redundancy
  ``beta * (attention received from visual tokens) - (1 - beta) * (attention received from the text after the
  image)``, correlation ``gamma * (direct attention between the pair) + (1 - gamma) * (text-bridged attention)``,
  ``beta = gamma = 0.6``. The released code merges inside layer ``c + 1 ..`` between attention and MLP with
  ``c = 4``; in this convention its first reduced layer is 6 (``--ficoco-start-layer 6``).
* ``ficoco-vl`` - both; the LLM stage starts from the encoder's reduced count.

Budget: ``--visual-token-num T`` is the final visual-token count (``ficoco-v``: tokens the LLM receives;
``ficoco-l`` / ``ficoco-vl``: tokens in the input of the last decoder layer). The per-layer merge counts are solved
so that ``T`` is reached exactly (even split, earlier layers take the remainder); ``--ficoco-r r`` fixes ``r`` per
layer instead (with ``T``: ``r`` per layer until ``T`` is reached). The counts are in every trace.

``--ficoco-reference-quirks`` reproduces the released code's harmless choices for A/B runs: pre-softmax logits
instead of probabilities (without the causal mask in the LLM), both V-filter terms L2-normalised with ``lam`` on the
[CLS] term, the "sent" direction of the vision term, the code's FiCoCo-L formulas (sum over visual keys, mean over
text keys, no ``1/M`` in the indirect term) and FiCoCo-L's un-normalised merge. Its bugs (scrambled token order,
scatter into the wrong rows, a never-reset global penalty state, hard-coded 576 tokens / visual span, batch size 1)
are not reproduced.

The pure functions (Filter / Correlate / Compress) are batched over ``B`` rows that all hold the same number of
candidate tokens, run in fp32 and know nothing about a model; they accept both attention flavours (probabilities, or
with ``quirks=True`` head-averaged pre-softmax logits, each stage then following the released code's formula).
Indices are ``torch.long``; sets are returned sorted ascending (sequence order) and ties always go to the lower
index. FiCoCo-V, -L and -VL live in this one file: they are one method family sharing these functions and options,
and FiCoCo-VL builds its two stage configs from its own fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from llava.compression.llm.base import (
    LLMPruningMethod,
    PruneStep,
    RowSelection,
    check_layers,
    check_positions,
    positions_option,
)
from llava.compression.llm.schedule import per_layer_counts
from llava.compression.llm.scoring import causal_allowed, expand_kv_heads
from llava.compression.pre_llm import check_budget, check_choice, check_feature_layer, check_int
from llava.compression.primitives import merge_schedule
from llava.compression.registry import (
    CompressionConfigError,
    MethodConfig,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)
from llava.compression.vision_encoder import EncoderTokens, LayerAttention, VisionEncoderMethod

DEFAULT_BUDGET = 64
BUDGET_HELP = (
    "final visual tokens per image (ficoco-v: given to the LLM; ficoco-l/-vl: in the last decoder layer); "
    "FiCoCo solves its per-layer merge counts to reach it exactly (default 64 unless --ficoco-r is given)"
)


# -- filter, correlate, compress (pure functions) ----------------------------------------------------------------


REDUNDANCY_DIRECTIONS = ("received", "sent")


def head_mean_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    logits: bool = False,
) -> torch.Tensor:
    """Attention of every query over every key, averaged over heads, in fp32.

    Args:
        q: ``[B, H, Tq, d]`` queries (after RoPE where the model uses it); k: ``[B, H, Tk, d]`` keys (repeated for
            grouped-query attention).
        scale: the layer's logit scale (``d ** -0.5``).
        mask: optional additive mask broadcastable to ``[B, H, Tq, Tk]`` (``-inf`` / very negative = masked; may
            carry ToMe's ``log size`` bias). Ignored when ``logits``.
        logits: return the head-mean of the raw logits ``q k^T * scale`` (the released code's choice) instead of the
            head-mean of the softmax probabilities.

    Returns:
        ``[B, Tq, Tk]`` fp32. Heads are accumulated one at a time, so memory stays ``O(B Tq Tk)``.
    """
    b, h, tq, _ = q.shape
    out = torch.zeros(b, tq, k.shape[2], dtype=torch.float32, device=q.device)
    for head in range(h):
        s = (q[:, head].float() @ k[:, head].float().transpose(-1, -2)) * scale
        if logits:
            out += s
            continue
        if mask is not None:
            m = mask.float()
            m = m[:, min(head, m.shape[1] - 1)] if m.dim() == 4 else m
            s = s + m
        out += s.softmax(dim=-1)
    return out / h


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, T, C]`` projection output -> ``[B, H, T, C/H]``."""
    b, t, c = x.shape
    return x.reshape(b, t, num_heads, c // num_heads).transpose(1, 2)


def vision_redundancy(
    attn: torch.Tensor, lam: float = 0.35, direction: str = "received", quirks: bool = False
) -> torch.Tensor:
    """FiCoCo-V's redundancy score of every patch (Eq. 1); higher = discard first.

    Paper: ``s_i = lam * (1/N) sum_j A[j, i] - (1 - lam) * A[CLS, i]`` over the ``N`` patches: the vision-aware
    term is the attention patch ``i`` *receives* from the patches (``direction="sent"``: the attention it sends,
    ``(1/N) sum_j A[i, j]``), the semantic term the [CLS] attention it gets.

    Quirks (released code): ``attn`` are logits; both terms are L2-normalised over the patches and ``lam`` sits on
    the [CLS] term: ``s = (1 - lam) * v / |v| - lam * cls / |cls|``.

    Args:
        attn: ``[B, 1+N, 1+N]`` head-mean attention of the layer, [CLS] first.

    Returns:
        ``[B, N]`` fp32.
    """
    if direction not in REDUNDANCY_DIRECTIONS:
        raise ValueError(f"direction must be one of {REDUNDANCY_DIRECTIONS}, got {direction!r}")
    a = attn.float()
    p2p = a[:, 1:, 1:]
    vision = p2p.mean(dim=1) if direction == "received" else p2p.mean(dim=2)
    cls = a[:, 0, 1:]
    if quirks:
        vision, cls = F.normalize(vision, dim=-1), F.normalize(cls, dim=-1)
        return (1.0 - lam) * vision - lam * cls
    return lam * vision - (1.0 - lam) * cls


def local_penalty(
    scores: torch.Tensor,
    positions: torch.Tensor,
    grid: tuple[int, int],
    window: int = 2,
    factor: float = 2.0,
) -> torch.Tensor:
    """FiCoCo-V's local penalty: in every ``window x window`` cell of the patch grid, the most redundant token still
    present is pushed towards discarding (positive score ``* factor``, negative score ``/ factor``, zero unchanged).

    The grid is the image's *original* patch grid; tokens already merged away are simply absent (padded), so the
    windows are recomputed for every image and every layer from the tokens it still has. Ties inside a window go
    to the lower raster position. The effect: discards are spread over the image instead of piling up in one region.

    Args:
        scores: ``[B, n]`` redundancy of the current tokens; positions: ``[B, n]`` their raster index in the
            original ``grid = (rows, cols)``.

    Returns:
        ``[B, n]`` fp32 penalised scores.
    """
    s = scores.float()
    rows, cols = grid
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= rows * cols):
        raise ValueError(f"positions must lie in the {rows}x{cols} grid")
    wcols = math.ceil(cols / window)
    num_windows = math.ceil(rows / window) * wcols
    win = (positions // cols // window) * wcols + (positions % cols) // window  # [B, n]
    b = s.shape[0]
    wmax = torch.full((b, num_windows), float("-inf"), device=s.device).scatter_reduce(
        1, win, s, reduce="amax", include_self=True
    )
    is_max = s == torch.gather(wmax, 1, win)
    big = rows * cols
    cand = torch.where(is_max, positions, torch.full_like(positions, big))
    chosen = torch.full((b, num_windows), big, dtype=positions.dtype, device=s.device).scatter_reduce(
        1, win, cand, reduce="amin", include_self=True
    )
    boosted = positions == torch.gather(chosen, 1, win)
    penalised = torch.where(s > 0, s * factor, s / factor)
    return torch.where(boosted, penalised, s)


def select_sources(scores: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``r`` highest-scoring tokens are the sources (discarded and merged); the rest are preserved.

    ``[B, n]`` -> ``(sources [B, r], preserved [B, n - r])``, both ascending; ties -> lower index is discarded first.
    """
    n = scores.shape[-1]
    if not 0 <= r <= n:
        raise ValueError(f"cannot discard {r} of {n} tokens")
    order = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices
    return order[:, :r].sort(dim=-1).values, order[:, r:].sort(dim=-1).values


def language_redundancy(
    attn: torch.Tensor,
    visual: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    beta: float = 0.6,
    direction: str = "received",
    quirks: bool = False,
) -> torch.Tensor:
    """FiCoCo-L's redundancy score of every visual token (Eq. 3); higher = discard first.

    Paper, causal reading: ``s_i = beta * (1/N) sum_{j in V} A[j, i] - (1 - beta) * (1/M) sum_{k in X} A[k, i]``:
    the attention visual token ``i`` receives from the visual tokens (``direction="sent"``: the attention it pays
    to them, ``A[i, j]``) minus the attention it receives from the ``M`` text tokens that follow the image (text
    cannot be attended *by* visual tokens under the causal mask, so the text term reads the text -> visual rows).

    Quirks (released code, logits without the causal mask): ``s_i = beta * sum_{j in V} l[i, j] -
    (1 - beta) * mean_{k in X} l[i, k]`` (a sum over visual keys, a mean over text keys, visual queries).

    Args:
        attn: ``[B, T, T]`` head-mean attention of the layer over the whole sequence.
        visual: ``[B, N]`` positions of the visual tokens; text: ``[B, M]`` positions of the text tokens after the
            image (padded entries are ignored via ``text_mask [B, M]``).

    Returns:
        ``[B, N]`` fp32.
    """
    if direction not in REDUNDANCY_DIRECTIONS:
        raise ValueError(f"direction must be one of {REDUNDANCY_DIRECTIONS}, got {direction!r}")
    a = attn.float()
    tm = text_mask.float()
    m = tm.sum(dim=1, keepdim=True)  # [B, 1]
    vv = _block(a, visual, visual)  # [B, N, N] rows = queries
    if quirks:
        vt = _block(a, visual, text)  # [B, N, M]
        text_term = (vt * tm[:, None, :]).sum(dim=-1) / m.clamp(min=1)
        return beta * vv.sum(dim=-1) - (1.0 - beta) * text_term
    vision = vv.mean(dim=1) if direction == "received" else vv.mean(dim=2)
    tv = _block(a, text, visual)  # [B, M, N]
    text_term = (tv * tm[:, :, None]).sum(dim=1) / m.clamp(min=1)
    return beta * vision - (1.0 - beta) * text_term


def vision_correlation(
    attn: torch.Tensor, sources: torch.Tensor, preserved: torch.Tensor, quirks: bool = False
) -> torch.Tensor:
    """FiCoCo-V's correlation ``C[i, j] = A[i, j]``: the attention source patch ``i`` pays to preserved patch ``j``.

    Quirks: ``attn`` are head-mean logits and the code's weights are ``softmax`` of that row; the preserved columns
    of the row softmax are returned (the quantile targets and the normalised weights come out as in the code,
    except that targets are restricted to preserved patches).

    Args:
        attn: ``[B, 1+N, 1+N]`` ([CLS] first); sources / preserved: ``[B, r]`` / ``[B, m]`` patch indices (0-based
            among the ``N`` patches).

    Returns:
        ``[B, r, m]`` fp32, non-negative.
    """
    p2p = attn.float()[:, 1:, 1:]
    if quirks:
        p2p = attn.float().softmax(dim=-1)[:, 1:, 1:]
    return _block(p2p, sources, preserved)


def language_correlation(
    attn: torch.Tensor,
    visual: torch.Tensor,
    sources: torch.Tensor,
    preserved: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    gamma: float = 0.6,
    quirks: bool = False,
) -> torch.Tensor:
    """FiCoCo-L's correlation (Eq. 4): direct attention plus indirect correlation through the text tokens.

    Paper, causal reading: ``C[i, j] = gamma * (A[i, j] + A[j, i]) + (1 - gamma) * (1/M) sum_{k in X} A[k, i] A[k, j]``.
    Under the causal mask only one of ``A[i, j]`` / ``A[j, i]`` is non-zero (the later token attends the earlier
    one), so the direct term is the attention between the pair in the direction the mask allows; the indirect term
    says how similarly the text tokens attend to ``i`` and ``j``.

    Quirks (released code, logits without the causal mask): ``Con = gamma * l[i, j] + (1 - gamma) * sum_k l[i, k]
    l[k, j]`` (no ``1/M``), self excluded, weights ``softmax`` over the visual tokens (returned as that softmax).

    Args:
        attn: ``[B, T, T]`` head-mean attention; visual: ``[B, N]`` positions; sources / preserved: ``[B, r]`` /
            ``[B, m]`` indices *into* ``visual``; text, text_mask: as in :func:`language_redundancy`.

    Returns:
        ``[B, r, m]`` fp32, non-negative.
    """
    a = attn.float()
    tm = text_mask.float()
    vv = _block(a, visual, visual)  # [B, N, N]
    if quirks:
        vt = _block(a, visual, text) * tm[:, None, :]  # [B, N, M]
        tv = _block(a, text, visual) * tm[:, :, None]  # [B, M, N]
        con = gamma * vv + (1.0 - gamma) * (vt @ tv)
        eye = torch.eye(con.shape[-1], dtype=torch.bool, device=con.device)
        full = con.masked_fill(eye, float("-inf")).softmax(dim=-1)
        return _block(full, sources, preserved)
    tv = _block(a, text, visual) * tm[:, :, None]  # [B, M, N]
    m = tm.sum(dim=1).clamp(min=1)[:, None, None]
    indirect = (tv.transpose(1, 2) @ tv) / m  # [B, N, N]
    direct = vv + vv.transpose(1, 2)
    return _block(gamma * direct + (1.0 - gamma) * indirect, sources, preserved)


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q, dim=-1, keepdim=True)`` (linear interpolation) for any float dtype and size."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    v = x.float().sort(dim=-1).values
    n = v.shape[-1]
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    tau = v[..., lo : lo + 1] + frac * (v[..., hi : hi + 1] - v[..., lo : lo + 1])
    return torch.minimum(tau, v[..., -1:])  # rounding never leaves a row without its maximum


def adaptive_targets(corr: torch.Tensor, eps: float = 0.998) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-adaptive targets and merge weights from a correlation matrix.

    ``tau_i = quantile_eps(C[i, :])``, targets ``J_i = {j : C[i, j] >= tau_i}`` (never empty), weights
    ``alpha_ij = C[i, j] / sum_{j' in J_i} C[i, j']`` on ``J_i`` and 0 elsewhere (uniform over ``J_i`` if its
    correlations sum to 0).

    Args:
        corr: ``[B, r, m]`` non-negative correlations of each source with each preserved token.

    Returns:
        ``(alpha [B, r, m] fp32, rows sum to 1; counts [B, r] = |J_i|)``.
    """
    c = corr.float()
    if c.shape[-1] == 0:
        raise ValueError("no preserved token to merge into")
    targets = c >= quantile(c, eps)
    w = torch.where(targets, c.clamp(min=0), torch.zeros_like(c))
    total = w.sum(dim=-1, keepdim=True)
    uniform = targets.float() / targets.sum(dim=-1, keepdim=True)
    alpha = torch.where(total > 0, w / total.clamp(min=torch.finfo(torch.float32).tiny), uniform)
    return alpha, targets.sum(dim=-1)


def compress(
    x: torch.Tensor,
    sources: torch.Tensor,
    preserved: torch.Tensor,
    alpha: torch.Tensor,
    sizes: torch.Tensor | None = None,
    size_weighted: bool = False,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fold every source into its targets (Eq. 2, "self-preserving"):

    ``x_j <- (x_j + sum_{i in I_j} alpha_ij x_i) / (1 + sum_{i in I_j} alpha_ij)``, so a preserved token keeps at
    least half of itself. ``normalize=False`` is the released FiCoCo-L's additive update ``x_j + sum alpha_ij x_i``.
    ``size_weighted=True`` weighs tokens by how many patches they stand for (``s_j x_j + sum alpha_ij s_i x_i`` over
    ``s_j + sum alpha_ij s_i``), which conserves the size-weighted sum of the tokens exactly; with all sizes 1 it
    is Eq. 2. Sizes are always carried along: ``s_j <- s_j + sum_i alpha_ij s_i`` (total size is conserved because
    every row of ``alpha`` sums to 1).

    Args:
        x: ``[B, n, C]`` tokens; sources / preserved: ``[B, r]`` / ``[B, m]`` indices into them; alpha: ``[B, r, m]``
            weights from :func:`adaptive_targets`; sizes: ``[B, n]`` or ``None``.

    Returns:
        ``(x [B, m, C] for the preserved tokens in the order of ``preserved``, sizes [B, m] or None)``.
    """
    c = x.shape[-1]
    xf = x.float()
    xs = torch.gather(xf, 1, sources.unsqueeze(-1).expand(-1, -1, c))  # [B, r, C]
    xp = torch.gather(xf, 1, preserved.unsqueeze(-1).expand(-1, -1, c))  # [B, m, C]
    a = alpha.float()
    new_sizes = None
    if sizes is not None:
        s = sizes.float()
        ss, sp = torch.gather(s, 1, sources), torch.gather(s, 1, preserved)
        new_sizes = (sp + (a * ss.unsqueeze(-1)).sum(dim=1)).to(sizes.dtype)
    if size_weighted:
        if sizes is None:
            raise ValueError("size_weighted compression needs sizes")
        w = a * ss.unsqueeze(-1)  # [B, r, m]
        y = (sp.unsqueeze(-1) * xp + w.transpose(1, 2) @ xs) / (sp + w.sum(dim=1)).unsqueeze(-1)
    else:
        y = xp + a.transpose(1, 2) @ xs
        if normalize:
            y = y / (1.0 + a.sum(dim=1)).unsqueeze(-1)
    return y.to(x.dtype), new_sizes


def dominant_target(alpha: torch.Tensor, preserved: torch.Tensor) -> torch.Tensor:
    """For drawing: the preserved token (index into the tokens) that got most of each source. ``[B, r]``."""
    return torch.gather(preserved, 1, alpha.argmax(dim=-1))


def _block(a: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``a[b][rows[b]][:, cols[b]]`` for every ``b``: ``[B, T, T]``, ``[B, p]``, ``[B, q]`` -> ``[B, p, q]``."""
    t = a.shape[-1]
    sub = torch.gather(a, 1, rows.unsqueeze(-1).expand(-1, -1, t))
    return torch.gather(sub, 2, cols.unsqueeze(1).expand(-1, rows.shape[1], -1))



# -- config ------------------------------------------------------------------------------------------------------


def _r_option() -> Any:
    return option(
        None,
        "--ficoco-r",
        "FiCoCo: tokens merged per layer (with --visual-token-num: until it is reached)",
        type=int,
    )


def _quirks_option() -> Any:
    return option(
        False,
        "--ficoco-reference-quirks",
        "FiCoCo: reproduce the released code's harmless choices (attention logits, lambda on the [CLS] term, "
        "un-normalised merge in the LLM) for A/B comparisons",
    )


def _redundancy_option() -> Any:
    return option(
        None,
        "--ficoco-redundancy",
        "FiCoCo: vision-aware redundancy from the attention a token 'received' (paper text, default) or "
        "'sent' (the formula's index order; default under --ficoco-reference-quirks)",
        choices=REDUNDANCY_DIRECTIONS,
    )


def _quantile_option() -> Any:
    return option(0.998, "--ficoco-quantile", "FiCoCo: quantile eps of the token-adaptive targets")


def _lambda_option() -> Any:
    return option(0.35, "--ficoco-lambda", "FiCoCo-V: weight of the vision-aware redundancy")


def _local_penalty_option() -> Any:
    return option(True, "--ficoco-local-penalty", "FiCoCo-V: 2x2 local penalty on the redundancy scores")


def _size_weighted_option() -> Any:
    return option(
        False,
        "--ficoco-size-weighted",
        "FiCoCo-V: weigh tokens by their size in the merge (conserves the size-weighted token sum; not in the paper)",
    )


def _beta_option() -> Any:
    return option(0.6, "--ficoco-beta", "FiCoCo-L: weight of the vision-aware redundancy")


def _gamma_option() -> Any:
    return option(0.6, "--ficoco-gamma", "FiCoCo-L: weight of the direct correlation")


def _check_unit(flag: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise CompressionConfigError(f"{flag} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_bool(flag: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise CompressionConfigError(f"{flag} must be a boolean, got {value!r}")


def solve_schedule(
    num_tokens: int, num_layers: int, target: int | None, r: int | None, where: str
) -> list[int]:
    """FiCoCo's per-layer merge counts (see :func:`llava.compression.primitives.merge_schedule`); at least one token is
    always preserved. Raises :class:`CompressionConfigError` when the budget cannot be met."""
    if num_layers <= 0:
        raise CompressionConfigError(f"FiCoCo: no merging layer {where}")
    try:
        counts = merge_schedule(num_tokens, num_layers, target=target, r=r)
    except ValueError as err:
        raise CompressionConfigError(f"FiCoCo {where}: {err}") from None
    if target is None and r is not None and sum(counts) < r * num_layers:
        raise CompressionConfigError(
            f"FiCoCo {where}: --ficoco-r {r} over {num_layers} layers would merge more than the {num_tokens} tokens "
            "there are; lower it or give --visual-token-num"
        )
    return counts


# -- FiCoCo-V -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FiCoCoVConfig(VisionEncoderMethod):
    """Filter / correlate / compress inside the CLIP encoder, from encoder layer ``start`` to the feature layer."""

    name: ClassVar[str] = "ficoco-v"
    needs_queries: ClassVar[bool] = True

    visual_token_num: int | None = option(None, "--visual-token-num", BUDGET_HELP, type=int)
    ficoco_r: int | None = _r_option()
    ficoco_start_layer: int = option(
        12,
        "--ficoco-start-layer",
        "FiCoCo: first merging layer, 0-based (ficoco-v: CLIP encoder layer, default 12; ficoco-l: decoder layer "
        "that first runs on merged tokens, default 4)",
    )
    ficoco_lambda: float = _lambda_option()
    ficoco_quantile: float = _quantile_option()
    ficoco_local_penalty: bool = _local_penalty_option()
    ficoco_redundancy: str | None = _redundancy_option()
    ficoco_size_weighted: bool = _size_weighted_option()
    ficoco_reference_quirks: bool = _quirks_option()

    def __post_init__(self) -> None:
        if self.visual_token_num is None and self.ficoco_r is None:
            object.__setattr__(self, "visual_token_num", DEFAULT_BUDGET)
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)
        if self.ficoco_r is not None:
            check_int("--ficoco-r", self.ficoco_r, 0)
        check_int("--ficoco-start-layer", self.ficoco_start_layer, 0)
        _check_unit("--ficoco-lambda", self.ficoco_lambda)
        _check_unit("--ficoco-quantile", self.ficoco_quantile)
        if self.ficoco_redundancy is not None:
            check_choice("--ficoco-redundancy", self.ficoco_redundancy, REDUNDANCY_DIRECTIONS)
        for flag, value in (
            ("--ficoco-local-penalty", self.ficoco_local_penalty),
            ("--ficoco-size-weighted", self.ficoco_size_weighted),
            ("--ficoco-reference-quirks", self.ficoco_reference_quirks),
        ):
            _check_bool(flag, value)

    @property
    def direction(self) -> str:
        if self.ficoco_redundancy is not None:
            return self.ficoco_redundancy
        return "sent" if self.ficoco_reference_quirks else "received"

    def merge_layers(self, geometry: ModelGeometry) -> list[int]:
        return list(range(self.ficoco_start_layer, geometry.feature_layer + 1))

    def per_layer(self, geometry: ModelGeometry) -> list[int]:
        layers = self.merge_layers(geometry)
        return solve_schedule(
            geometry.num_patches,
            len(layers),
            self.visual_token_num,
            self.ficoco_r,
            f"in encoder layers {self.ficoco_start_layer}..{geometry.feature_layer}",
        )

    def final_count(self, geometry: ModelGeometry) -> int:
        return geometry.num_patches - sum(self.per_layer(geometry))

    def validate(self, geometry: ModelGeometry) -> None:
        if self.visual_token_num is not None:
            check_budget(self.visual_token_num, geometry)
        feature = check_feature_layer(geometry, self.name)
        if self.ficoco_start_layer > feature:
            raise CompressionConfigError(
                f"--ficoco-start-layer {self.ficoco_start_layer}: FiCoCo-V merges in encoder layers up to the "
                f"feature layer {feature} (0-based)"
            )
        self.per_layer(geometry)

    def schedule(self, geometry: ModelGeometry) -> dict[int, int]:
        return dict(zip(self.merge_layers(geometry), self.per_layer(geometry)))

    def trace_extras(self) -> dict[str, Any]:
        return {"ficoco_vision_start_layer": self.ficoco_start_layer}

    def merge(
        self, x: torch.Tensor, attention: LayerAttention, tokens: EncoderTokens, r: int
    ) -> torch.Tensor:
        q = split_heads(attention.queries, attention.num_heads)
        k = split_heads(attention.keys, attention.num_heads)
        quirks = self.ficoco_reference_quirks
        attn = head_mean_attention(q, k, attention.scale, mask=attention.bias, logits=quirks)
        # Filter
        scores = vision_redundancy(attn, self.ficoco_lambda, self.direction, quirks)
        if self.ficoco_local_penalty:
            scores = local_penalty(scores, tokens.positions, tokens.grid)
        sources, preserved = select_sources(scores, r)
        # Correlate
        corr = vision_correlation(attn, sources, preserved, quirks)
        alpha, counts = adaptive_targets(corr, self.ficoco_quantile)
        # Compress
        patches, patch_sizes = compress(
            x[:, 1:], sources, preserved, alpha, tokens.sizes[:, 1:], size_weighted=self.ficoco_size_weighted
        )
        tokens.update(
            attention.layer,
            sources,
            preserved,
            dominant_target(alpha, preserved),
            patch_sizes,
            ficoco_targets_per_source=[round(float(c), 3) for c in counts.float().mean(dim=1)],
        )
        return torch.cat([x[:, :1], patches], dim=1)


# -- FiCoCo-L -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FiCoCoLConfig(LLMPruningMethod):
    """Filter / correlate / compress between decoder layers ``start .. L-1`` (in-LLM engine)."""

    name: ClassVar[str] = "ficoco-l"
    static_cache_refusal: ClassVar[str | None] = (
        "it inserts merged tokens at data-dependent places of each row at every merging layer"
    )

    visual_token_num: int | None = option(None, "--visual-token-num", BUDGET_HELP, type=int)
    ficoco_r: int | None = _r_option()
    ficoco_start_layer: int = option(
        4,
        "--ficoco-start-layer",
        "FiCoCo: first merging layer, 0-based (ficoco-v: CLIP encoder layer, default 12; ficoco-l: decoder layer "
        "that first runs on merged tokens, default 4)",
    )
    ficoco_beta: float = _beta_option()
    ficoco_gamma: float = _gamma_option()
    ficoco_quantile: float = _quantile_option()
    ficoco_redundancy: str | None = _redundancy_option()
    ficoco_reference_quirks: bool = _quirks_option()
    llm_positions: str = positions_option("original")
    # visual tokens the LLM is expected to receive per image (None: the encoder's patch count); set by ficoco-vl
    input_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.visual_token_num is None and self.ficoco_r is None:
            object.__setattr__(self, "visual_token_num", DEFAULT_BUDGET)
        if self.visual_token_num is not None:
            check_int("--visual-token-num", self.visual_token_num, 1)
        if self.ficoco_r is not None:
            check_int("--ficoco-r", self.ficoco_r, 0)
        check_int("--ficoco-start-layer", self.ficoco_start_layer, 1)
        _check_unit("--ficoco-beta", self.ficoco_beta)
        _check_unit("--ficoco-gamma", self.ficoco_gamma)
        _check_unit("--ficoco-quantile", self.ficoco_quantile)
        if self.ficoco_redundancy is not None:
            check_choice("--ficoco-redundancy", self.ficoco_redundancy, REDUNDANCY_DIRECTIONS)
        _check_bool("--ficoco-reference-quirks", self.ficoco_reference_quirks)
        check_positions(self.llm_positions)

    @property
    def direction(self) -> str:
        if self.ficoco_redundancy is not None:
            return self.ficoco_redundancy
        return "sent" if self.ficoco_reference_quirks else "received"

    def prune_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        layers = tuple(range(self.ficoco_start_layer, geometry.llm_layers))
        if not layers:
            raise CompressionConfigError(
                f"--ficoco-start-layer {self.ficoco_start_layer}: the LLM has {geometry.llm_layers} layers "
                f"(0-based, layer 0 never merges); use 1..{geometry.llm_layers - 1}"
            )
        return check_layers("--ficoco-start-layer", layers, geometry)

    def expected_input(self, geometry: ModelGeometry) -> int:
        return self.input_tokens if self.input_tokens is not None else geometry.num_patches

    def per_layer(self, num_visual: int, num_steps: int) -> list[int]:
        """Merges before each pruning layer for a row that enters the LLM with ``num_visual`` visual tokens."""
        target = self.visual_token_num
        if target is not None and target > num_visual:
            target = num_visual  # a row with fewer visual tokens than the budget is left as it is
        return solve_schedule(
            num_visual, num_steps, target, self.ficoco_r, f"in decoder layers {self.ficoco_start_layer}.."
        )

    def validate(self, geometry: ModelGeometry) -> None:
        steps = len(self.prune_layers(geometry))
        n0 = self.expected_input(geometry)
        if self.visual_token_num is not None:
            check_int(
                "--visual-token-num",
                self.visual_token_num,
                1,
                n0,
                f" (the LLM receives {n0} visual tokens per image)",
            )
        self.per_layer(n0, steps)

    def trace_extras(self, geometry: ModelGeometry) -> dict[str, Any]:
        steps = len(self.prune_layers(geometry))
        return {
            "ficoco_llm_start_layer": self.ficoco_start_layer,
            "ficoco_llm_merges_per_layer": self.per_layer(self.expected_input(geometry), steps),
        }

    def query_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        # every merge reads layer K-1's queries of all visual + following text tokens: capture, do not recompute
        return tuple(k - 1 for k in self.prune_layers(geometry))

    def token_schedule(self, geometry: ModelGeometry, visual_tokens: int | None = None) -> list[int]:
        """Visual tokens entering each decoder layer (the engine's trace convention) for a row whose LLM input holds
        ``visual_tokens`` of them (default: what the LLM is expected to receive, :meth:`expected_input`)."""
        n = self.expected_input(geometry) if visual_tokens is None else visual_tokens
        layers = self.prune_layers(geometry)
        current, drops = n, []
        for layer, r in zip(layers, self.per_layer(n, len(layers))):
            r = min(r, current - 1)
            if r > 0:
                current -= r
                drops.append((layer, current))
        return per_layer_counts(geometry.llm_layers, n, drops)

    def select(self, step: PruneStep) -> list[RowSelection | None]:
        layer = step.layer - 1  # merging before layer K reads layer K-1's attention
        b = step.batch_size
        vis_rows = [step.visual_indices(r) for r in range(b)]
        txt_rows = [step.text_after_visual(r) for r in range(b)]
        rows = [r for r in range(b) if vis_rows[r].numel() > 0]
        out: list[RowSelection | None] = [None] * b
        if not rows:
            return out
        for r in rows:
            vis = vis_rows[r]
            if int(vis[-1] - vis[0]) + 1 != vis.numel():
                raise ValueError(
                    "ficoco-l merges one contiguous run of visual tokens per row; row "
                    f"{r} has its visual tokens in several runs"
                )
        dev = step.hidden.device
        width = max(vis_rows[r].numel() + txt_rows[r].numel() for r in rows)
        index = torch.zeros(b, width, dtype=torch.long, device=dev)
        for r in rows:
            idx = torch.cat([vis_rows[r], txt_rows[r]])
            index[r, : idx.numel()] = idx
        attn = _layer_attention(step, layer, index, logits=self.ficoco_reference_quirks)  # [B, W, T]
        num_steps = len(self.prune_layers(step.geometry))
        for r in rows:
            vis, txt = vis_rows[r], txt_rows[r]
            n, m = vis.numel(), txt.numel()
            idx = index[r, : n + m]
            a = attn[r, : n + m][:, idx][None]  # [1, n+m, n+m] rows/cols: visual then text
            schedule = self.per_layer(step.input_visual_count(r), num_steps)
            k = min(schedule[step.stage], n - 1)
            if k <= 0:
                continue
            visual = torch.arange(n, device=dev)[None]
            text = (n + torch.arange(m, device=dev))[None]
            text_mask = torch.ones(1, m, dtype=torch.bool, device=dev)
            quirks = self.ficoco_reference_quirks
            # Filter
            scores = language_redundancy(
                a, visual, text, text_mask, self.ficoco_beta, self.direction, quirks
            )
            sources, preserved = select_sources(scores, k)
            # Correlate
            corr = language_correlation(
                a, visual, sources, preserved, text, text_mask, self.ficoco_gamma, quirks
            )
            alpha, _ = adaptive_targets(corr, self.ficoco_quantile)
            # Compress: the preserved tokens come back as "merged" tokens at their own positions, in order
            x = step.hidden[r, vis][None]
            merged, _ = compress(x, sources, preserved, alpha, normalize=not quirks)
            out[r] = RowSelection(
                keep=torch.zeros(0, dtype=torch.long, device=dev),
                merged=merged[0],
                merged_position_of=preserved[0],
            )
        return out


def _layer_attention(step: PruneStep, layer: int, index: torch.Tensor, logits: bool) -> torch.Tensor:
    """``[B, Q, T]`` head-mean attention of ``layer`` for the current token indices ``index [B, Q]``.

    Probabilities under the causal and padding mask (exactly the layer's own weights), or, with ``logits``, the
    head-mean pre-softmax logits without any mask (the released code's choice). Heads are accumulated one at a time.
    """
    q = step.queries(layer, index)  # [B, H, Q, d] post-RoPE (layer K-1's captured q_proj output)
    k = expand_kv_heads(step.keys(layer), q.shape[1])  # [B, H, T, d]
    scale = q.shape[-1] ** -0.5
    if logits:
        return head_mean_attention(q, k, scale, logits=True)
    allowed = causal_allowed(index, step.valid)  # [B, Q, T]
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    mask = mask.masked_fill(~allowed, float("-inf"))[:, None]
    return torch.nan_to_num(head_mean_attention(q, k, scale, mask=mask), nan=0.0)


# -- FiCoCo-VL ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FiCoCoVLConfig(MethodConfig):
    """FiCoCo-V in the encoder, then FiCoCo-L in the LLM on the encoder's reduced tokens."""

    name: ClassVar[str] = "ficoco-vl"

    visual_token_num: int | None = option(None, "--visual-token-num", BUDGET_HELP, type=int)
    ficoco_vision_token_num: int | None = option(
        None,
        "--ficoco-vision-token-num",
        "FiCoCo-VL: visual tokens after the encoder (default: halfway between the patch count and "
        "--visual-token-num)",
        type=int,
    )
    ficoco_r: int | None = _r_option()
    ficoco_vision_start_layer: int = option(
        12, "--ficoco-vision-start-layer", "FiCoCo-VL: first merging CLIP encoder layer (0-based)"
    )
    ficoco_llm_start_layer: int = option(
        4, "--ficoco-llm-start-layer", "FiCoCo-VL: first decoder layer that runs on merged tokens (0-based)"
    )
    ficoco_lambda: float = _lambda_option()
    ficoco_beta: float = _beta_option()
    ficoco_gamma: float = _gamma_option()
    ficoco_quantile: float = _quantile_option()
    ficoco_local_penalty: bool = _local_penalty_option()
    ficoco_redundancy: str | None = _redundancy_option()
    ficoco_size_weighted: bool = _size_weighted_option()
    ficoco_reference_quirks: bool = _quirks_option()
    llm_positions: str = positions_option("original")

    def __post_init__(self) -> None:
        if self.visual_token_num is None and self.ficoco_r is None:
            object.__setattr__(self, "visual_token_num", DEFAULT_BUDGET)
        if self.ficoco_vision_token_num is not None:
            check_int("--ficoco-vision-token-num", self.ficoco_vision_token_num, 1)
        self.vision_for(None)  # validates the shared fields
        self._llm(None)

    def vision_for(self, geometry: ModelGeometry | None) -> FiCoCoVConfig:
        """The encoder stage as a ``ficoco-v`` config (``geometry``: the model's, for the default split)."""
        return FiCoCoVConfig(
            **self._stage_arguments(FiCoCoVConfig),
            visual_token_num=self._vision_target(geometry),
            ficoco_start_layer=self.ficoco_vision_start_layer,
        )

    def llm_for(self, geometry: ModelGeometry) -> FiCoCoLConfig:
        """The LLM stage as a ``ficoco-l`` config expecting the encoder's output count on ``geometry``."""
        return self._llm(geometry)

    def validate(self, geometry: ModelGeometry) -> None:
        vision = self.vision_for(geometry)
        vision.validate(geometry)
        if self.visual_token_num is not None and self.visual_token_num > vision.final_count(geometry):
            raise CompressionConfigError(
                f"ficoco-vl: --visual-token-num {self.visual_token_num} exceeds the "
                f"{vision.final_count(geometry)} tokens left after the encoder"
            )
        self._llm(geometry).validate(geometry)

    def encoder_token_schedule(self, geometry: ModelGeometry) -> list[tuple[int, int]]:
        """Per encoder layer of one image, (attention, MLP) tokens with the [CLS]: FiCoCo-V's."""
        return self.vision_for(geometry).encoder_token_schedule(geometry)

    def token_schedule(self, geometry: ModelGeometry, visual_tokens: int | None = None) -> list[int]:
        """Visual tokens entering each decoder layer: FiCoCo-L's schedule on what the encoder leaves (or on
        ``visual_tokens``, e.g. all frames of a sample)."""
        return self.llm_for(geometry).token_schedule(geometry, visual_tokens)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["vision_token_num"] = self._vision_target(None)
        return out

    def _vision_target(self, geometry: ModelGeometry | None) -> int | None:
        if self.ficoco_vision_token_num is not None:
            return self.ficoco_vision_token_num
        if self.visual_token_num is None or self.ficoco_r is not None:
            return None  # the encoder merges ficoco_r per layer
        n = (geometry or ModelGeometry()).num_patches
        return (n + self.visual_token_num + 1) // 2

    def _llm(self, geometry: ModelGeometry | None) -> FiCoCoLConfig:
        return FiCoCoLConfig(
            **self._stage_arguments(FiCoCoLConfig),
            visual_token_num=self.visual_token_num,
            ficoco_start_layer=self.ficoco_llm_start_layer,
            input_tokens=None if geometry is None else self.vision_for(geometry).final_count(geometry),
        )

    def _stage_arguments(self, stage: type[MethodConfig]) -> dict[str, Any]:
        """This config's values of the ``stage`` config's fields that both share by name (the budget and the start
        layer differ per stage and are set by the caller)."""
        own = {f.name for f in dataclasses.fields(self)}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(stage)
            if f.name in own and f.name not in _PER_STAGE_FIELDS
        }


# fields of FiCoCo-VL that do not carry over to a stage config under their own name
_PER_STAGE_FIELDS = frozenset({"visual_token_num", "ficoco_start_layer"})


register(
    MethodSpec(
        "ficoco-v",
        FiCoCoVConfig,
        (Stage.VISION_ENCODER,),
        "filter / correlate / compress merging inside the CLIP encoder from layer 12 (FiCoCo-V)",
    )
)
register(
    MethodSpec(
        "ficoco-l",
        FiCoCoLConfig,
        (Stage.LLM,),
        "filter / correlate / compress merging inside the LLM from layer 4, text-aware (FiCoCo-L)",
    )
)
register(
    MethodSpec(
        "ficoco-vl",
        FiCoCoVLConfig,
        (Stage.VISION_ENCODER, Stage.LLM),
        "FiCoCo-V in the encoder, then FiCoCo-L in the LLM on the reduced tokens (FiCoCo-VL)",
    )
)
