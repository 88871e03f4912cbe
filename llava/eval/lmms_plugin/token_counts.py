"""What a compressed model reports per lmms-eval response: the seam is lmms-eval's own per-sample token counts.

lmms-eval 0.7 lets ``generate_until`` return :class:`lmms_eval.api.instance.GenerationResult` (text plus a
:class:`~lmms_eval.api.instance.TokenCounts`); the evaluator keeps the counts on the request and writes
``counts.to_dict()`` into each logged sample (``--log_samples``: ``samples_<task>.jsonl``, field ``token_counts``, one
entry per request of the document). :class:`VisualTokenCounts` adds the visual tokens the LLM received and the rest
of the method's trace (per-layer counts of in-LLM methods, tokens per frame, ...) to that dictionary.

The same wrapper carries ``loglikelihood`` results: lmms-eval 0.7.3's evaluator passes every model output through
``unwrap_generation_output``, which turns a bare ``(loglikelihood, is_greedy)`` tuple into its string (breaking
``multiple_choice`` tasks for every model), but hands a ``GenerationResult``'s ``text`` through untouched. So a
loglikelihood result is ``GenerationResult(text=(value, is_greedy), token_counts=...)``, which the task code then
unpacks as the tuple it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's token counts plus ``visual_tokens`` (at the LLM input) and the method's trace fields."""

    visual_tokens: int | None = None
    trace: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, Any] = dict(super().to_dict())
        if self.visual_tokens is not None:
            counts["visual_tokens"] = self.visual_tokens
        for key, value in self.trace.items():
            counts.setdefault(key, value)
        return counts


def with_counts(value: Any, trace: dict[str, Any], input_tokens: int | None = None,
                output_tokens: int | None = None) -> GenerationResult:
    """``value`` (an answer, or a ``(loglikelihood, is_greedy)`` pair) with its sample's counts."""
    trace = dict(trace)
    visual = trace.pop("visual_tokens", None)
    counts = VisualTokenCounts(input_tokens=input_tokens, output_tokens=output_tokens,
                               visual_tokens=None if visual is None else int(visual), trace=trace)
    return GenerationResult(text=value, token_counts=counts)
