"""The lmms-eval model class shared by every family: ``--model_args``, batching, stop strings, token counts.

A family's class (:class:`~llava.eval.lmms_plugin.llava_model.VTCLlava`,
``videollava.eval.lmms_video_plugin.VTCVideoLlava``) subclasses :class:`CompressedLMM` and provides five things: its
loading flags (:meth:`~CompressedLMM.add_model_arguments`), the validation of the method against the checkpoint's
config files (:meth:`~CompressedLMM.validate`, before any weights load), loading (:meth:`~CompressedLMM.load`), one
batch of generation (:meth:`~CompressedLMM.generate_batch`, the family's own generator) and the score of one
continuation (:meth:`~CompressedLMM.score`).

Construction (lmms-eval calls ``cls(**model_args, batch_size=..., device=...)``): the arguments are parsed with the
CLI's flags (:mod:`llava.eval.lmms_plugin.model_args`) and the method is validated before the model loads. A bad
key, value, method or checkpoint prints ONE line (``error: ...``) and raises :class:`ModelArgsExit` (a
``SystemExit`` with status 2): lmms-eval's CLI catches every ``Exception`` of a run, prints its traceback and exits
with status 0, so an ordinary exception would neither be one line nor fail the command.

``generate_until``: requests are grouped by their generation settings (lmms-eval's ``generation_kwargs``) and answered
``batch_size`` at a time in request order; greedy unless the task's ``temperature`` is above 0 (``do_sample: false``
forces greedy); ``max_new_tokens`` from the task (else the ``max_new_tokens`` model argument, 1024 as lmms-eval's
LLaVA wrappers); the answer is cut at the first of the task's ``until`` strings. ``loglikelihood``: one request at a
time (:mod:`llava.eval.lmms_plugin.continuation`). Every response carries its visual-token counts
(:mod:`llava.eval.lmms_plugin.token_counts`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from lmms_eval.api.model import lmms
from tqdm import tqdm

from llava.eval.lmms_plugin.model_args import ModelArgsError, build_parser, parse_model_args
from llava.eval.lmms_plugin.token_counts import with_counts

DEFAULT_MAX_NEW_TOKENS = 1024  # lmms-eval's llava / llava_hf default when a task sets none


class ModelArgsExit(SystemExit):
    """Raised by the constructor for bad ``--model_args`` after printing the one-line reason (exit status 2).
    ``error`` holds the original exception."""

    def __init__(self, error: Exception):
        super().__init__(2)
        self.error = error


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input (one line, no traceback), as the entry points treat them."""
    from llava.eval.runner import USER_ERRORS

    return (ModelArgsError, *USER_ERRORS)


def stop_at(text: str, until: Sequence[str]) -> str:
    """``text`` cut at the first occurrence of any stop string (lm-eval's rule: each string splits in turn)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def generation_settings(gen_kwargs: dict[str, Any], default_max_new_tokens: int):
    """``(GenerationSettings, until)`` from a task's ``generation_kwargs``; greedy unless ``temperature > 0``."""
    from llava.eval.inference import GenerationSettings

    kwargs = dict(gen_kwargs or {})
    until = kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    temperature = float(kwargs.get("temperature") or 0.0)
    if kwargs.get("do_sample") is False:
        temperature = 0.0
    top_p = kwargs.get("top_p")
    settings = GenerationSettings(
        max_new_tokens=int(kwargs.get("max_new_tokens") or default_max_new_tokens),
        temperature=temperature,
        top_p=None if top_p is None or temperature == 0 else float(top_p),
        num_beams=int(kwargs.get("num_beams") or 1),
    )
    settings.validate()
    return settings, list(until)


def flatten_visuals(visuals: Any) -> list[Any]:
    """A task's ``doc_to_visual`` result as a flat list (tasks return a list, sometimes nested, or ``None``)."""
    if visuals is None:
        return []
    if not isinstance(visuals, list | tuple):
        return [visuals]
    flat: list[Any] = []
    for v in visuals:
        flat.extend(flatten_visuals(v))
    return flat


class CompressedLMM(lmms):
    """An lmms-eval model wrapping one of our checkpoints with a compression method applied (see module doc)."""

    is_simple = True
    model_name: ClassVar[str] = ""  # the lmms-eval name (``--model``), for messages

    def __init__(self, **model_args: Any):
        super().__init__()
        try:
            args = parse_model_args(build_parser(self._all_model_arguments), model_args)
            if not args.pretrained:
                raise ModelArgsError(f"--model_args needs pretrained=<local checkpoint folder> for {self.model_name}")
            self.batch_size_per_call = _batch_size(args.batch_size)
            self.method = self.validate(args)
        except user_errors() as err:
            print(f"error: {err}", file=sys.stderr)
            raise ModelArgsExit(err) from None
        self.args = args
        device = self._set_up_processes(args.device)
        self.load(args, device)

    # -- what a family provides --------------------------------------------------------------------------------

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The family's loading flags (``--pretrained`` and the like)."""
        raise NotImplementedError

    def validate(self, args: argparse.Namespace):
        """The validated method config of ``args``, from the checkpoint's config files only (no weights)."""
        raise NotImplementedError

    def load(self, args: argparse.Namespace, device: str) -> None:
        """Load the checkpoint onto ``device`` and apply ``self.method``."""
        raise NotImplementedError

    def generate_batch(self, contexts: list[str], visuals: list[list[Any]], settings) -> list:
        """One :class:`~llava.eval.inference.SampleResult` per context (its visuals: PIL images or video paths)."""
        raise NotImplementedError

    def score(self, context: str, continuation: str, visuals: list[Any]) -> tuple[Any, dict[str, Any]]:
        """``(ContinuationScore, trace)`` of ``continuation`` after ``context`` with ``visuals``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------

    @classmethod
    def _all_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("model")
        group.add_argument("--pretrained", default=None, help="local checkpoint folder (either layout)")
        cls.add_model_arguments(group)
        run = parser.add_argument_group("run")
        run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (lmms-eval's --device)")
        run.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU) | float16 | bfloat16 | float32")
        run.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
        run.add_argument("--batch-size", default="1", help="requests per generate() call (lmms-eval's --batch_size)")
        run.add_argument("--max-batch-size", default=None, help="accepted from lmms-eval; unused")
        run.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                         help="when the task's generation_kwargs set none")
        run.add_argument("--save-kept-tokens", action=argparse.BooleanOptionalAction, default=False,
                         help="also log the kept token indices in each sample's token_counts")

    def _set_up_processes(self, device: str | None) -> str:
        """Rank and world size under ``accelerate launch`` (lmms-eval shards the documents by rank); the device."""
        device = device or "auto"
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            if device in ("auto", "cuda"):
                device = f"cuda:{accelerator.local_process_index}"
        return device

    def _request_document(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests) -> list:
        results: list[Any] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        with tqdm(total=len(requests), desc=f"{self.model_name} responding", disable=self.rank != 0) as bar:
            for indices in groups.values():
                settings, until = generation_settings(requests[indices[0]].args[1], self.args.max_new_tokens)
                for start in range(0, len(indices), self.batch_size_per_call):
                    chunk = indices[start : start + self.batch_size_per_call]
                    contexts, visuals = [], []
                    for index in chunk:
                        context, _, doc_to_visual, doc_id, task, split = requests[index].args
                        doc = self._request_document(task, split, doc_id)
                        contexts.append(context)
                        visuals.append(flatten_visuals(doc_to_visual(doc)) if doc_to_visual else [])
                    answers = self.generate_batch(contexts, visuals, settings)
                    for index, answer in zip(chunk, answers):
                        results[index] = with_counts(stop_at(answer.text, until), answer.trace)
                    bar.update(len(chunk))
        return results

    def loglikelihood(self, requests) -> list:
        results = []
        for request in tqdm(requests, desc=f"{self.model_name} scoring", disable=self.rank != 0):
            args = request.args
            if len(args) == 2:  # acc_mutual_info's unconditional request: ("", continuation), no document
                context, continuation, visuals = args[0], args[1], []
            else:
                context, doc_to_target, doc_to_visual, doc_id, task, split = args
                doc = self._request_document(task, split, doc_id)
                continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
                visuals = flatten_visuals(doc_to_visual(doc)) if doc_to_visual else []
            score, trace = self.score(context, str(continuation), visuals)
            results.append(with_counts((score.mean_nll, score.is_greedy), trace, input_tokens=score.input_tokens))
        return results

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError(f"{self.model_name} answers single-round tasks (generate_until, loglikelihood)")


def _batch_size(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ModelArgsError(f"--batch_size must be an integer >= 1, got {value!r} ('auto' is not supported)")
    return int(text)
