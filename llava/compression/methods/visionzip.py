"""VisionZip (arXiv 2412.04467): dominant tokens by [CLS] attention + contextual tokens by key similarity.

Count convention: ``--visual-token-num`` is the *total* number of visual tokens the LLM gets per image,
``T = D + C``. ``C`` (``--contextual-tokens``) defaults to ``round(5 T / 32)``, which reproduces every official
LLaVA-1.5 setting (192 = 162 + 30, 128 = 108 + 20, 64 = 54 + 10). As in the official LLaVA code the ``D`` dominant
tokens include the [CLS] token (so ``D - 1`` patches); ``--no-visionzip-cls`` keeps ``D`` patches instead.

Dominant: the [CLS] token and the top patches by the head-summed [CLS] attention of the feature layer (the one
that produces ``hidden_states[-2]``), in original order. Contextual: the remaining patches (original order); targets
are every ``max(1, M // C)``-th of them (first ``C``); every other remaining patch joins its most cosine-similar
target on the same layer's head-averaged keys; contextual token = target + mean of its joined patches.
Output: dominant tokens, then contextual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from llava.compression.pre_llm import (
    PreLLMMethod,
    Reduction,
    VisionSignals,
    check_budget,
    check_feature_layer,
    check_int,
)
from llava.compression.primitives import cls_patch_scores, topk_indices
from llava.compression.registry import (
    CompressionConfigError,
    MethodSpec,
    ModelGeometry,
    Stage,
    option,
    register,
)

# -- algorithm (pure functions) ----------------------------------------------------------------------------------


def uniform_targets(num_tokens: int, num_targets: int) -> torch.Tensor:
    """VisionZip's merge targets among ``M`` tokens: every ``max(1, M // c)``-th token, the first ``c``. ``[c]``."""
    if not 0 <= num_targets <= num_tokens:
        raise ValueError(f"cannot choose {num_targets} targets among {num_tokens} tokens")
    if num_targets == 0:
        return torch.zeros(0, dtype=torch.long)
    step = max(1, num_tokens // num_targets)
    return torch.arange(0, num_tokens, step, dtype=torch.long)[:num_targets]


def contextual_merge(
    x: torch.Tensor, metric: torch.Tensor, num_targets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens from the ``M`` tokens left after the dominant ones were taken.

    Targets are :func:`uniform_targets`; every other token joins its most cosine-similar target (``metric``,
    ties -> lower target); contextual token ``j = x_target_j + mean of the tokens that joined j`` (just
    ``x_target_j`` when none joined).

    Args:
        x: ``[M, C]`` features (in original order); metric: ``[M, Cm]`` similarity features.

    Returns:
        ``(merged [c, C], targets [c] positions into the M tokens, assignment [M] target slot of every token)``.
    """
    m, dev = x.shape[0], x.device
    targets = uniform_targets(m, num_targets).to(dev)
    assignment = torch.empty(m, dtype=torch.long, device=dev)
    if num_targets == 0:
        return x[:0], targets, assignment.fill_(-1)
    is_target = torch.zeros(m, dtype=torch.bool, device=dev)
    is_target[targets] = True
    others = (~is_target).nonzero().squeeze(-1)
    mn = F.normalize(metric.float(), dim=-1)
    joined = torch.argmax(mn[others] @ mn[targets].T, dim=-1) if others.numel() else others  # [M - c]
    assignment[targets] = torch.arange(num_targets, device=dev)
    assignment[others] = joined
    xf = x.float()
    sums = torch.zeros(num_targets, x.shape[-1], dtype=torch.float32, device=dev).index_add_(
        0, joined, xf[others]
    )
    counts = torch.bincount(joined, minlength=num_targets).clamp_(min=1).unsqueeze(-1)
    merged = xf[targets] + sums / counts
    return merged.to(x.dtype), targets, assignment



def mean_over_heads_of_keys(k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """VisionZip's similarity metric: keys averaged over heads, ``[B, M, C]`` -> ``[B, M, C/H]`` (fp32)."""
    b, m, c = k.shape
    return k.float().reshape(b, m, num_heads, c // num_heads).mean(dim=2)



# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionZipConfig(PreLLMMethod):
    """``T = D + C`` tokens: dominant ([CLS] + top patches) and contextual (merged) tokens."""

    name: ClassVar[str] = "visionzip"

    visual_token_num: int = option(64, "--visual-token-num", "visual tokens per image given to the LLM")
    contextual_tokens: int | None = option(
        None,
        "--contextual-tokens",
        "VisionZip: contextual (merged) tokens C of the total T (default round(5T/32): 64 = 54 + 10)",
        type=int,
    )
    visionzip_cls: bool = option(
        True, "--visionzip-cls", "VisionZip: count the [CLS] token as a dominant token"
    )

    def __post_init__(self) -> None:
        check_int("--visual-token-num", self.visual_token_num, 1)
        if self.contextual_tokens is not None:
            check_int("--contextual-tokens", self.contextual_tokens, 0)
        if not isinstance(self.visionzip_cls, bool):
            raise CompressionConfigError(f"--visionzip-cls must be a boolean, got {self.visionzip_cls!r}")
        if self.dominant < (1 if self.visionzip_cls else 0):
            raise CompressionConfigError(
                f"--contextual-tokens {self.contextual} leaves {self.dominant} dominant tokens of "
                f"--visual-token-num {self.visual_token_num}; VisionZip keeps at least the [CLS] token"
            )

    @property
    def contextual(self) -> int:
        if self.contextual_tokens is not None:
            return self.contextual_tokens
        return int(round(self.visual_token_num * 5 / 32))

    @property
    def dominant(self) -> int:
        return self.visual_token_num - self.contextual

    @property
    def dominant_patches(self) -> int:
        return self.dominant - 1 if self.visionzip_cls else self.dominant

    def validate(self, geometry: ModelGeometry) -> None:
        check_budget(self.visual_token_num, geometry)
        check_feature_layer(geometry, self.name)
        if self.contextual > geometry.num_patches - self.dominant_patches:
            raise CompressionConfigError(
                f"VisionZip: {self.contextual} contextual tokens need as many patches left after the "
                f"{self.dominant_patches} dominant ones (of {geometry.num_patches})"
            )

    def probe_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        return (geometry.feature_layer,)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(dominant=self.dominant, contextual=self.contextual)
        return out

    def token_schedule(self, geometry: ModelGeometry) -> list[int]:
        """Visual tokens of one image entering each decoder layer: the budget (dominant + contextual tokens)."""
        return [self.visual_token_num] * geometry.llm_layers

    def reduce(self, signals: VisionSignals) -> Reduction:
        layer = signals.feature_layer
        scores = cls_patch_scores(signals, layer, "sum")  # [B, N]
        dom = topk_indices(scores, self.dominant_patches)  # [B, D'] ascending
        metric = mean_over_heads_of_keys(
            signals.layer_keys(layer)[:, 1:], signals.num_heads
        )  # [B, N, d]
        x = signals.patches
        b, n, _ = x.shape
        n_cls = 1 if self.visionzip_cls else 0
        feats, kept, groups, info = [], [], [], []
        for i in range(b):
            is_dom = torch.zeros(n, dtype=torch.bool, device=x.device)
            is_dom[dom[i]] = True
            rest = (~is_dom).nonzero().squeeze(-1)  # ascending
            merged, targets, assignment = contextual_merge(x[i, rest], metric[i, rest], self.contextual)
            parts = [signals.tokens[i, :1]] if n_cls else []
            feats.append(torch.cat([*parts, x[i, dom[i]], merged]))
            kept.append(torch.cat([dom[i], rest[targets]]).sort().values)
            g = torch.empty(n, dtype=torch.long, device=x.device)
            g[dom[i]] = torch.arange(dom.shape[1], device=x.device) + n_cls
            g[rest] = torch.where(assignment >= 0, assignment + n_cls + dom.shape[1], -1)
            groups.append(g)
            info.append({"dominant": self.dominant, "contextual": self.contextual, "cls_token": bool(n_cls)})
        return Reduction(features=feats, kept_indices=kept, groups=groups, info=info)


register(
    MethodSpec(
        "visionzip",
        VisionZipConfig,
        (Stage.PRE_LLM,),
        "dominant [CLS]-attention tokens + contextual key-similarity merges, T = D + C (VisionZip)",
        requires=frozenset({"cls"}),  # scores patches by the [CLS] token's attention
    )
)
