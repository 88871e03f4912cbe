"""The likelihood of a continuation after a multimodal prompt, on a model with any compression method applied.

lmms-eval's ``loglikelihood`` requests (``multiple_choice`` tasks ask one per choice) give a context and a
continuation. The prompt is the model's conversation template with the context as the user turn and the
assistant's turn opened; the continuation follows it as text. As lm-eval does, the prompt and prompt +
continuation are tokenised whole and the continuation is the tokens after the prompt's (the common prefix, should a
merge at the boundary change the prompt's last token). One forward pass scores it:

* visual features come pre-encoded (``mm_encoder_outputs``, as generation gets them), so a pre-LLM method's
  reduction and placeholder run are exactly those of generation;
* an in-LLM method would otherwise take the *last* token of the sequence as the prompt's last token (FastV's query
  row, SparseVLM's raters, ...); :func:`~llava.compression.families.decoder_pruning.pin_prompt` keeps them those of
  the prompt, so the kept tokens are the ones generation keeps;
* logits are read from the end of the sequence, so they line up whether or not an in-LLM method shortened it.

The value returned is lmms-eval's convention for its LLaVA wrappers (``llava``, ``llava_hf``): the mean negative
log-likelihood per continuation token (the ``loss``), since its ``multiple_choice`` scoring takes the ``argmin``.
``is_greedy`` says whether greedy decoding (with the ids generation never emits suppressed) yields the continuation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from llava.mm_utils import tokenizer_image_token


@dataclass(frozen=True)
class ContinuationScore:
    mean_nll: float
    is_greedy: bool
    input_tokens: int
    continuation_tokens: int


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def score_continuation(model, tokenizer, prompt: str, continuation: str, visual_token_id: int,
                       visual_counts: int | list[int], mm_encoder_outputs: dict[str, Any] | None,
                       in_llm_method: bool, suppress_token_ids: list[int] = ()) -> ContinuationScore:
    """Score ``continuation`` after ``prompt`` (text with ``<image>`` placeholders expanded to ``visual_counts``)."""
    context_ids = tokenizer_image_token(prompt, tokenizer, visual_token_id, visual_counts)
    full_ids = tokenizer_image_token(prompt + continuation, tokenizer, visual_token_id, visual_counts)
    prompt_length = common_prefix(context_ids, full_ids)
    n = len(full_ids) - prompt_length
    if n <= 0:
        raise ValueError(f"the continuation {continuation!r} adds no token to the prompt")
    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([full_ids], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(input_ids), "use_cache": False}
    if mm_encoder_outputs:
        kwargs["mm_encoder_outputs"] = mm_encoder_outputs
    pinned = contextlib.nullcontext()
    if in_llm_method:
        from llava.compression.families.decoder_pruning import pin_prompt

        pinned = pin_prompt(model, prompt_length)
    with pinned:
        logits = model(input_ids=input_ids, **kwargs).logits
    # the positions predicting the continuation: the n before the last (counted from the end, see above)
    step_logits = logits[0, -n - 1 : -1].float()
    targets = input_ids[0, -n:]
    log_probs = torch.log_softmax(step_logits, dim=-1)
    mean_nll = -log_probs.gather(1, targets[:, None]).mean()
    if suppress_token_ids:
        step_logits[:, list(suppress_token_ids)] = float("-inf")
    is_greedy = bool((step_logits.argmax(dim=-1) == targets).all())
    return ContinuationScore(float(mean_nll), is_greedy, len(full_ids), n)
