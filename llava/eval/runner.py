"""The shared evaluation loop behind every ``llava.eval.model_vqa*`` entry point.

Arguments are validated (method flags against the checkpoint's geometry, question file, chunk, answers file)
before the model loads. Answers are appended per record (:class:`llava.eval.answers.AnswerWriter`: one writer
per file, a lock beside it); a rerun of the same command skips questions already in the answer file, and
refuses a file whose answers were made with other settings (checkpoint, method and its arguments, conversation
mode, decoding: ``metadata.run``); ``--overwrite`` starts fresh. A bad image stops the run with a message naming
the question and the file, or, with ``--skip-bad-inputs``, is recorded in that answer's ``metadata.error``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import shortuuid
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llava.compression.registry import CompressionConfigError, add_method_arguments, config_from_args
from llava.eval.answers import AnswerWriter, refuse_input_as_answers
from llava.eval.data_parallel import chunk_file, launch_info, mark_done, merge_when_done
from llava.eval.inference import GenerationSettings, LlavaGenerator
from llava.eval.parent_watch import exit_with_parent
from llava.eval.questions import EvalItem, QuestionFileError, get_chunk, number_occurrences
from llava.eval.run_settings import record_settings, run_metadata
from llava.mm_utils import BadInputError, load_image, load_image_b64
from llava.model.builder import (
    checkpoint_family,
    get_model_name_from_path,
    load_pretrained_model,
    read_model_geometry,
)
from llava.model.original_layout import CheckpointError

USER_ERRORS = (CheckpointError, QuestionFileError, BadInputError, CompressionConfigError, ValueError, FileNotFoundError)


def build_parser(description: str, max_new_tokens: int) -> argparse.ArgumentParser:
    """The research repos' flags plus batching, resuming and compression flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-path", required=True, help="local checkpoint folder (llava-hf or original layout)")
    p.add_argument("--model-base", default=None, help="base model for partial (e.g. projector-only) checkpoints")
    p.add_argument("--vision-tower", default=None, help="local CLIP folder overriding mm_vision_tower")
    p.add_argument("--question-file", required=True)
    p.add_argument("--image-folder", default="")
    p.add_argument("--answers-file", required=True)
    p.add_argument("--conv-mode", default="vicuna_v1",
                   help="vicuna_v1 (LLaVA-1.5, LLaVA-1.6-Vicuna) | mistral_instruct (LLaVA-1.6-Mistral) | llava_v1")
    p.add_argument("--next-grid", default="anyres", choices=["anyres", "fixed-672"],
                   help="LLaVA-NeXT only: anyres (LLaVA-1.6 as released) | fixed-672 (FasterVLM's 2880-token grid)")
    p.add_argument("--budget-mode", default=None, choices=["per-crop", "global"],
                   help="LLaVA-NeXT, pre-LLM methods: per-crop (default; T visual tokens per crop, FasterVLM's "
                        "convention) | global (fastervlm: T x crops per image, split by score across its crops)")
    p.add_argument("--min-pixels", type=int, default=None,
                   help="Qwen2.5-VL only: the image processor's min_pixels (default: the checkpoint's)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="Qwen2.5-VL only: the image processor's max_pixels (default: the checkpoint's)")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    add_run_arguments(p, max_new_tokens, "image")
    return p


def add_run_arguments(p: argparse.ArgumentParser, max_new_tokens: int, unit: str) -> None:
    """Decoding, batching, device, resume and compression flags shared by every inference entry point.
    ``unit`` names what one question carries ("image", "video") in the help texts."""
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the evaluation setting)")
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (--temperature > 0) and random methods")
    p.add_argument("--batch-size", type=int, default=1, help="questions per generate() call (left padding)")
    p.add_argument("--num-workers", type=int, default=2, help=f"{unit}-loading worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU) | float16 | bfloat16 | float32")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    p.add_argument("--overwrite", action="store_true", help="start a fresh answers file instead of resuming")
    p.add_argument("--skip-bad-inputs", action="store_true",
                   help=f"record unreadable {unit}s in the answer (metadata.error) and go on")
    p.add_argument("--retry-errors", action="store_true", help="rerun questions recorded with an error")
    p.add_argument("--save-kept-tokens", action="store_true", help="record kept_indices in each answer's metadata")
    add_method_arguments(p)


class _ItemImages(Dataset):
    """Loads and preprocesses each item's image in DataLoader workers; errors travel as values."""

    def __init__(self, items: list[EvalItem], image_processor):
        self.items, self.image_processor = items, image_processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        """``(index, pixels, image_size, error)``: ``image_size`` is ``(height, width)`` for LLaVA-NeXT, else None."""
        item = self.items[index]
        if not item.has_image:
            return index, None, None, None
        try:
            if item.image_b64 is not None:
                image = load_image_b64(item.image_b64, f"question {item.question_id!r}")
            else:
                image = load_image(item.image_path, convert_rgb=item.convert_rgb)
            processed = self.image_processor(images=image, return_tensors="pt")
        except BadInputError as err:
            return index, None, None, f"question {item.question_id!r}: {err}"
        grid = processed.get("image_grid_thw")
        if grid is not None:  # Qwen2.5-VL: all the image's patches, with its (t, h, w) grid
            return index, processed["pixel_values"], tuple(int(s) for s in grid[0]), None
        sizes = processed.get("image_sizes")
        image_size = None if sizes is None else tuple(int(s) for s in sizes[0])
        return index, processed["pixel_values"][0], image_size, None


def run(args: argparse.Namespace, load_items: Callable[[], list[EvalItem]]) -> None:
    """Validate, resume, load, generate, append. Raises USER_ERRORS subclasses for bad input."""
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.num_beams)
    settings.validate()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    next_grid = getattr(args, "next_grid", "anyres")
    family = checkpoint_family(args.model_path)
    is_next, is_qwen = family == "llava_next", family == "qwen2_5_vl"
    if next_grid != "anyres" and not is_next:
        raise CheckpointError(f"--next-grid {next_grid} applies to LLaVA-NeXT checkpoints only; {args.model_path} is "
                              f"{'Qwen2.5-VL' if is_qwen else 'LLaVA-1.5'} (drop --next-grid)")
    pixels = {"min_pixels": getattr(args, "min_pixels", None), "max_pixels": getattr(args, "max_pixels", None)}
    if is_qwen:
        check_qwen_conv_mode(args)
        qwen_method_defaults(args)
    elif any(v is not None for v in pixels.values()):
        raise CheckpointError(f"--min-pixels / --max-pixels apply to Qwen2.5-VL checkpoints only; {args.model_path} "
                              "is not one (drop them)")
    method = config_from_args(args, read_model_geometry(args.model_path, args.vision_tower, pixels["max_pixels"]))
    budget_mode = getattr(args, "budget_mode", None)
    if budget_mode is not None:
        if not is_next:
            raise CheckpointError(f"--budget-mode {budget_mode} applies to LLaVA-NeXT checkpoints only (its crops); "
                                  f"{args.model_path} is not one (drop --budget-mode)")
        from llava.compression.families.llava_next import check_budget_mode

        check_budget_mode(method, budget_mode)
    launch = launch_info()
    final_answers = args.answers_file
    if launch is not None and args.num_chunks == 1:  # accelerate launch / torchrun: one chunk per rank
        args.num_chunks, args.chunk_idx = launch.world_size, launch.rank
        args.answers_file = chunk_file(final_answers, launch.world_size, launch.rank)
        if args.device == "auto" and torch.cuda.is_available():
            args.device = f"cuda:{launch.local_rank}"
    for answers in {final_answers, args.answers_file}:
        refuse_input_as_answers(answers, {"--question-file": args.question_file})
    all_items = load_items()
    if not all_items:
        raise QuestionFileError(f"question file {args.question_file} holds no questions (check --question-file)")
    items = number_occurrences(get_chunk(all_items, args.num_chunks, args.chunk_idx))
    model_id = get_model_name_from_path(args.model_path)
    base_metadata = {"method": method.name, "method_args": method.to_dict(),
                     "run": run_metadata(args.conv_mode, args.max_new_tokens, args.temperature, args.top_p,
                                         args.num_beams, args.seed)}
    if is_next:  # the grid changes every NeXT answer: a resume with the other grid is refused (metadata.run)
        base_metadata["run"]["next_grid"] = next_grid
        if budget_mode == "global":  # recorded only when it differs from the default, per crop
            base_metadata["run"]["budget_mode"] = budget_mode
    if is_qwen:  # the pixel range changes every Qwen answer likewise
        base_metadata["run"].update({k: v for k, v in pixels.items() if v is not None})
    with AnswerWriter(args.answers_file, record_settings({"model_id": model_id, "metadata": base_metadata}),
                      [it.key for it in items], overwrite=args.overwrite, retry_errors=args.retry_errors) as writer:
        todo = [it for it in items if not writer.is_answered(it.key)]
        print(f"{len(items)} questions in chunk {args.chunk_idx}/{args.num_chunks}: {len(items) - len(todo)} "
              f"already answered, {len(todo)} to run; method {method.name} {method.to_dict()}")
        if todo:
            _answer(args, todo, writer, settings, method, model_id, base_metadata)
    _finish_data_parallel(launch, args, final_answers)


def _answer(args: argparse.Namespace, todo: list[EvalItem], writer: AnswerWriter, settings: GenerationSettings,
            method, model_id: str, base_metadata: dict) -> None:
    """Load the model and answer ``todo`` in order, appending each answer to ``writer``."""
    torch.manual_seed(args.seed)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, device=args.device, dtype=args.dtype,
        attn_implementation=args.attn_implementation, vision_tower=args.vision_tower,
        next_grid=getattr(args, "next_grid", "anyres"),
        min_pixels=getattr(args, "min_pixels", None), max_pixels=getattr(args, "max_pixels", None),
    )
    if method.name != "none":
        from llava.compression import apply

        budget_mode = getattr(args, "budget_mode", None)
        apply(model, method, **({} if budget_mode is None else {"budget_mode": budget_mode}))
    if getattr(model.config, "model_type", None) == "qwen2_5_vl":
        from llava.eval.qwen_inference import QwenGenerator

        generator = QwenGenerator(tokenizer, model, save_kept_tokens=args.save_kept_tokens)
    else:
        generator = LlavaGenerator(tokenizer, model, args.conv_mode, save_kept_tokens=args.save_kept_tokens)

    loader = DataLoader(_ItemImages(todo, image_processor), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers, collate_fn=list)
    visual_tokens_total, answered, with_image, start = 0, 0, 0, time.time()
    with tqdm(total=len(todo), unit="q", desc="answering", dynamic_ncols=True) as bar:
        for batch in loader:
            good = []
            for index, pixels, image_size, error in batch:
                item = todo[index]
                if error is None:
                    good.append((item, pixels, image_size))
                elif args.skip_bad_inputs:
                    writer.write(_record(item, "", model_id, dict(base_metadata, error=error)), item.key)
                else:
                    raise BadInputError(error + " (rerun with --skip-bad-inputs to record it and go on)")
            if good:
                results = generator.generate([it.message for it, _, _ in good], [p for _, p, _ in good], settings,
                                             image_sizes=[s for _, _, s in good])
                for (item, _, _), result in zip(good, results):
                    writer.write(_record(item, result.text, model_id, dict(base_metadata, **result.trace)), item.key)
                    answered += 1
                    if item.has_image:
                        visual_tokens_total += result.trace.get("visual_tokens", 0)
                        with_image += 1
            bar.update(len(batch))
            if with_image:
                bar.set_postfix(visual_tokens=f"{visual_tokens_total / with_image:.1f}")
    elapsed = time.time() - start
    if answered:
        tokens = f"{visual_tokens_total / with_image:.1f} per image" if with_image else "no images"
        print(f"answered {answered} questions in {elapsed:.1f}s ({elapsed / answered:.2f}s each); "
              f"visual tokens to the LLM: {tokens}; answers: {args.answers_file}")


def check_qwen_conv_mode(args: argparse.Namespace) -> None:
    """Qwen2.5-VL answers with its own chat format: ``--conv-mode`` is ``qwen2_5_vl`` (the LLaVA default
    ``vicuna_v1`` is taken to mean the model's own template); another template is refused."""
    from llava.eval.qwen_inference import CONV_MODE

    if args.conv_mode not in ("vicuna_v1", CONV_MODE):
        raise ValueError(f"--conv-mode {args.conv_mode}: a Qwen2.5-VL checkpoint uses its own chat format "
                         f"(--conv-mode {CONV_MODE}, or leave the default)")
    args.conv_mode = CONV_MODE


def qwen_method_defaults(args: argparse.Namespace) -> None:
    """The Qwen2.5-VL family's defaults for the method flags (in-LLM methods keep original M-RoPE positions;
    ``--llm-positions compact`` is refused), before the config is built."""
    from llava.compression.families.qwen2_5_vl import default_options
    from llava.compression.registry import get_method

    given = {} if getattr(args, "llm_positions", None) is None else {"llm_positions": args.llm_positions}
    options = default_options(get_method(args.method), given)
    if "llm_positions" in options:
        args.llm_positions = options["llm_positions"]


def _finish_data_parallel(launch, args: argparse.Namespace, final_answers: str) -> None:
    if launch is None or args.answers_file == final_answers:
        return
    mark_done(args.answers_file)
    if launch.rank == 0:
        lines = merge_when_done(final_answers, launch.world_size)
        print(f"rank 0 merged {lines} answers from {launch.world_size} ranks into {final_answers}")


def _record(item: EvalItem, text: str, model_id: str, metadata: dict) -> dict:
    return {"question_id": item.question_id, "prompt": item.prompt, "text": text,
            "answer_id": shortuuid.uuid(), "model_id": model_id, **item.extra, "metadata": metadata}


def main_with_errors(fn: Callable[[], None]) -> None:
    """Run an entry point; user errors print one line (no traceback) and exit with status 2. Started by a runner,
    the entry point ends with it (:func:`llava.eval.parent_watch.exit_with_parent`)."""
    exit_with_parent()
    try:
        fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; answers written so far are kept and a rerun resumes", file=sys.stderr)
        sys.exit(130)
