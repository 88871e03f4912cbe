"""FiCoCo ("Filter, Correlate, Compress", arXiv 2411.17686 v4): the three stages as pure tensor functions.

Token reduction in one layer = **Filter** (a redundancy score per token; the ``r`` most redundant become the
sources ``S``) -> **Correlate** (a correlation ``C[i, j]`` between every source ``i`` and every preserved token
``j``, turned into token-adaptive targets by an ``eps``-quantile) -> **Compress** (each preserved token absorbs
its sources with the self-preserving weighted average of Eq. 2). The functions are batched over ``B`` rows that
all hold the same number of candidate tokens, run in fp32 and know nothing about a model: the vision-encoder
integration (FiCoCo-V) and the in-LLM engine (FiCoCo-L) call them with the attention of the layer they act in.

Two attention flavours are accepted everywhere:

* the paper's (default): ``attn`` are softmax probabilities averaged over heads (for the LLM: under the causal
  and padding mask);
* ``quirks=True`` (``--ficoco-reference-quirks``): ``attn`` are head-averaged *pre-softmax logits*, as in the
  released code, and each stage follows the code's formula (documented per function). Only choices that are
  harmless to emulate are reproduced; the code's ordering / scatter / global-state bugs are not.

Indices are ``torch.long``; sets are returned sorted ascending (sequence order) and ties always go to the lower
index, so every result is deterministic and independent of the batch it was computed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REDUNDANCY_DIRECTIONS = ("received", "sent")


# -- attention from a layer's own queries and keys --------------------------------------------------------------


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


# -- Filter ----------------------------------------------------------------------------------------------------------


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


# -- Correlate -------------------------------------------------------------------------------------------------------


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


# -- Compress --------------------------------------------------------------------------------------------------------


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


# -- budget ----------------------------------------------------------------------------------------------------------


def merge_schedule(
    num_tokens: int,
    num_layers: int,
    target: int | None = None,
    r: int | None = None,
    cap=None,
) -> list[int]:
    """Per-layer merge counts for ``num_layers`` consecutive merging layers that start with ``num_tokens`` tokens.

    * ``target`` only: ``num_tokens - target`` merges spread as evenly as possible, earlier layers taking the
      remainder (``ceil`` of what is left over the layers left); the result reaches ``target`` exactly.
    * ``r`` only: ``r`` per layer (each capped), the final count follows.
    * both: ``r`` per layer until ``target`` is reached; the last merging layer takes the remainder, later ones 0.

    ``cap(n)`` bounds one layer's merges given its ``n`` tokens (default ``n - 1``: keep one token).
    Raises ``ValueError`` when ``target`` cannot be reached.
    """
    if target is None and r is None:
        raise ValueError("give a target token count, a per-layer r, or both")
    cap = cap or (lambda n: n - 1)
    if target is not None and not 0 < target <= num_tokens:
        raise ValueError(f"target {target} must be in [1, {num_tokens}]")
    if r is not None and r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    n, out = num_tokens, []
    for layer in range(num_layers):
        left = num_layers - layer
        if target is None:
            want = r
        elif r is None:
            want = -(-(n - target) // left)
            # never leave more than the remaining layers can still merge (matters when caps bind, e.g. ToMe's n / 2)
            while want < min(cap(n), n - target) and _fewest(n - want, left - 1, cap) > target:
                want += 1
        else:
            want = min(r, n - target)
        step = max(0, min(want, cap(n)))
        out.append(step)
        n -= step
    if target is not None and n != target:
        raise ValueError(
            f"{num_tokens} -> {target} tokens is not reachable in {num_layers} merging layers"
            + (f" with r = {r}" if r is not None else "")
            + f" (reaches {n})"
        )
    return out


# -- helpers ---------------------------------------------------------------------------------------------------------


def _fewest(n: int, layers: int, cap) -> int:
    """Tokens left after ``layers`` layers that each merge as many as ``cap`` allows."""
    for _ in range(layers):
        n -= max(0, cap(n))
    return n


def _block(a: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``a[b][rows[b]][:, cols[b]]`` for every ``b``: ``[B, T, T]``, ``[B, p]``, ``[B, q]`` -> ``[B, p, q]``."""
    t = a.shape[-1]
    sub = torch.gather(a, 1, rows.unsqueeze(-1).expand(-1, -1, t))
    return torch.gather(sub, 2, cols.unsqueeze(1).expand(-1, rows.shape[1], -1))
