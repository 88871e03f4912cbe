"""Scores for in-LLM methods from a decoder layer's own queries and keys (pure tensor functions).

Only the attention rows a method needs are evaluated (a few queries against all keys), so the layers keep their
attention backend. Queries and keys arrive post-RoPE: the engine rotates them with the model's own
``apply_rotary_pos_emb`` and the position embeddings the layer receives (no RoPE is re-implemented here). Every score is fp32. Shapes: ``B`` rows, ``H`` query heads, ``H_kv`` key/value heads (GQA:
``H = g * H_kv``), ``Q`` queries, ``T`` keys, head width ``d``.
"""

from __future__ import annotations

import torch


def expand_kv_heads(k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, H_kv, T, d]`` -> ``[B, H, T, d]`` (each key head shared by ``H / H_kv`` query heads, as ``repeat_kv``)."""
    b, hkv, t, d = k.shape
    if num_heads == hkv:
        return k
    if num_heads % hkv:
        raise ValueError(f"{num_heads} query heads cannot share {hkv} key heads")
    return k[:, :, None].expand(b, hkv, num_heads // hkv, t, d).reshape(b, num_heads, t, d)


def attention_rows(q: torch.Tensor, k: torch.Tensor, scaling: float, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention rows of some queries against all keys.

    Args:
        q: ``[B, H, Q, d]`` post-RoPE queries.
        k: ``[B, H_kv, T, d]`` post-RoPE keys.
        scaling: logit scale (``d ** -0.5`` for Llama).
        allowed: ``[B, Q, T]`` bool, which keys each query may attend to (causal and padding).

    Returns:
        ``[B, H, Q, T]`` fp32 probabilities (rows with no allowed key are all zero).
    """
    kf = expand_kv_heads(k, q.shape[1]).float()
    logits = torch.matmul(q.float(), kf.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def causal_allowed(queries: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, Q, T]`` bool: key ``j`` is allowed for query index ``i`` iff ``j <= i`` and ``valid[b, j]``."""
    t = valid.shape[1]
    keys = torch.arange(t, device=valid.device)
    return (keys[None, None, :] <= queries[:, :, None]) & valid[:, None, :]


def text_raters(visual_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """SparseVLM's text raters of one row: ``[N_v, D]``, ``[N_t, D]`` -> ``[N_t]`` bool.

    ``M = softmax_over_text(V T^T)`` (raw dot products, as upstream), averaged over the visual tokens, gives one
    relevance score per text token; raters are the text tokens scoring above the mean score.
    """
    if text_embeds.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=text_embeds.device)
    m = (visual_embeds.float() @ text_embeds.float().T).softmax(dim=-1).mean(dim=0)
    return m > m.mean()


def key_l1_norm(k: torch.Tensor) -> torch.Tensor:
    """DART's pivot score: L1 norm of each token's key with all key heads concatenated.

    ``[H_kv, T, d]`` -> ``[T]`` fp32 (the ranking is the same with heads repeated for GQA).
    """
    return k.float().abs().sum(dim=(0, 2))
