"""ToMe (Bolya et al., ICLR 2023): bipartite soft matching, size tracking, proportional attention.

Pure tensor functions, batched over ``B`` images that all hold ``n`` tokens (the first one may be a protected
[CLS] token). Nothing here knows about a model: the vision-encoder integration calls them between the attention
and the MLP of an encoder layer (``llava.compression.families.clip_merging``).

Token order of the survivors (:data:`TOKEN_ORDERS`): ``official`` is the order of the official code
(facebookresearch/ToMe ``bipartite_soft_matching``): ``[unmerged A tokens] + [all B tokens]``, the unmerged A tokens
in ascending A order when the first token is a protected [CLS] (the official code sorts them so the [CLS] stays
first) and otherwise in the order of the edge ranking (best remaining edge first), the B tokens in their sequence
order. The next layer's alternating A / B split is taken on that order, so it changes which tokens can merge later,
and it is the order the LLM receives. ``raster`` keeps the sequence order of the survivors instead. Arithmetic runs
in fp32 and is cast back to the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TOKEN_ORDERS = ("official", "raster")


@dataclass
class MergePlan:
    """Which tokens merge into which, in sequence-index space (``[B, r]`` each, ``torch.long``).

    src: tokens that disappear; dst: the token each of them is merged into (a survivor);
    keep: ``[B, n - r]`` surviving token indices in their output order (ascending for the ``raster`` order).
    """

    src: torch.Tensor
    dst: torch.Tensor
    keep: torch.Tensor

    @property
    def r(self) -> int:
        return self.src.shape[1]


def key_metric(keys: torch.Tensor, num_heads: int) -> torch.Tensor:
    """ToMe's similarity metric: the layer's keys averaged over heads. ``[B, n, C]`` -> ``[B, n, C/H]`` fp32."""
    b, n, c = keys.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by {num_heads} heads")
    return keys.float().reshape(b, n, num_heads, c // num_heads).mean(dim=2)


def max_merges(num_tokens: int, protected: int = 1) -> int:
    """The most tokens one bipartite step can merge: ``(n - protected) // 2`` (ToMe's cap on ``r``)."""
    return max(0, (num_tokens - protected) // 2)


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, protect_first: bool = True, order: str = "official"
) -> MergePlan:
    """One ToMe matching step over ``n`` tokens.

    Tokens at even positions form set A, odd positions set B. Every A token's best B partner is its most
    cosine-similar one (ties -> lower index); the ``r`` A tokens with the most similar partners (ties -> lower
    index) merge into them. With ``protect_first`` token 0 (the [CLS]) is never a source. ``r`` is capped at
    :func:`max_merges`, as in ToMe.

    Args:
        metric: ``[B, n, d]`` similarity features (see :func:`key_metric`).
        r: merges wanted.
        order: order of the survivors in ``keep`` (see :data:`TOKEN_ORDERS` and the module docstring).

    Returns:
        :class:`MergePlan` with ``min(r, cap)`` merges.
    """
    if order not in TOKEN_ORDERS:
        raise ValueError(f"ToMe token order must be one of {', '.join(TOKEN_ORDERS)}, got {order!r}")
    b, n, _ = metric.shape
    r = min(r, max_merges(n, 1 if protect_first else 0))
    dev = metric.device
    if r <= 0:  # no merge: the official code returns the tokens untouched
        empty = torch.zeros(b, 0, dtype=torch.long, device=dev)
        return MergePlan(empty, empty.clone(), torch.arange(n, device=dev).expand(b, n).clone())
    m = F.normalize(metric.float(), dim=-1)
    a_idx = torch.arange(0, n, 2, device=dev)
    b_idx = torch.arange(1, n, 2, device=dev)
    scores = m[:, a_idx] @ m[:, b_idx].transpose(1, 2)  # [B, |A|, |B|]
    if protect_first:
        scores[:, 0, :] = float("-inf")
    node_idx = scores.argmax(dim=-1)  # best B partner; ties -> the first (lower) index
    node_max = torch.gather(scores, 2, node_idx.unsqueeze(-1)).squeeze(-1)
    edge_order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices  # A tokens, best edge first
    src_a = edge_order[:, :r]
    src = a_idx[src_a]  # [B, r]
    dst = b_idx[torch.gather(node_idx, 1, src_a)]
    if order == "raster":
        gone = torch.zeros(b, n, dtype=torch.bool, device=dev)
        gone.scatter_(1, src, True)
        keep = torch.arange(n, device=dev).expand(b, n)[~gone].reshape(b, n - r)
    else:
        unmerged_a = edge_order[:, r:]
        if protect_first:  # the official code sorts them so that the [CLS] stays first
            unmerged_a = unmerged_a.sort(dim=-1).values
        keep = torch.cat([a_idx[unmerged_a], b_idx.expand(b, -1)], dim=1)
    return MergePlan(src=src, dst=dst, keep=keep)


def merge_weighted_average(
    x: torch.Tensor, sizes: torch.Tensor, plan: MergePlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's size-weighted merge: ``x_d <- (s_d x_d + sum_{s->d} s_s x_s) / (s_d + sum s_s)``, ``s_d <- s_d + sum s_s``.

    The size-weighted sum ``sum_i s_i x_i`` and the total size are conserved.

    Args:
        x: ``[B, n, C]`` tokens; sizes: ``[B, n]`` how many original patches each token stands for.

    Returns:
        ``(x [B, n - r, C], sizes [B, n - r])`` for the tokens in ``plan.keep``, in its order.
    """
    xf = x.float()
    s = sizes.float()
    mass = xf * s.unsqueeze(-1)
    if plan.r:
        c = x.shape[-1]
        src_mass = torch.gather(mass, 1, plan.src.unsqueeze(-1).expand(-1, -1, c))
        mass = mass.scatter_add(1, plan.dst.unsqueeze(-1).expand(-1, -1, c), src_mass)
        s = s.scatter_add(1, plan.dst, torch.gather(s, 1, plan.src))
    keep_mass = torch.gather(mass, 1, plan.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    keep_sizes = torch.gather(s, 1, plan.keep)
    return (keep_mass / keep_sizes.unsqueeze(-1)).to(x.dtype), keep_sizes.to(sizes.dtype)


def proportional_attention_bias(sizes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ToMe's proportional attention as an additive mask: ``log s_j`` on every key ``j``.

    ``softmax(q k^T / sqrt(d) + log s)`` weights a merged token as if its ``s`` copies were all present.
    ``[B, n]`` -> ``[B, 1, 1, n]`` (broadcasts over heads and queries; SDPA and eager attention both take it).
    """
    return sizes.float().log()[:, None, None, :].to(dtype)
