"""Zero-shot video QA inference with Video-LLaVA (either checkpoint layout), with or without token compression.

    python -m videollava.eval.run_inference_video_qa --model-path checkpoints/Video-LLaVA-7B \\
        --video-dir .../MSVD_Zero_Shot_QA/videos --gt-file-question .../test_q_1k.json \\
        --gt-file-answers .../test_a_1k.json --output-dir OUT --output-name 1_0 --num-chunks 1 --chunk-idx 0 \\
        [--method fastervlm --visual-token-num 64 [--budget-mode per-frame|global] [--keep-cls]] \\
        [--temperature 0] [--batch-size 1]

Questions and answers (``test_q*.json`` / ``test_a*.json``) are joined by ``question_id``
(:func:`videollava.eval.video_qa_data.load_qa_pairs`), then chunked with LLaVA's ``get_chunk`` (upstream's chunking
paired later chunks with the wrong answers). Videos are ``<video-dir>/<video-prefix><video_name><ext>`` for ``ext`` in
``.mp4 .avi .mov .mkv`` (``--video-prefix v_`` for ActivityNet). Everything is validated (method flags against the
checkpoint's per-frame geometry, QA files, chunk, video folder) before the model loads.

Output: ``<output-dir>/<output-name>.json`` (JSON lines, as upstream names it), one record per question, appended
by one writer at a time (:class:`llava.eval.answers.AnswerWriter`, a lock beside the file); a rerun skips question
ids already there and refuses a file whose answers were made with other settings (checkpoint, method and its
arguments, budget mode, [CLS], conversation mode, decoding: ``metadata.run``); ``--overwrite`` starts fresh. Record fields, as the judge
(:mod:`videollava.eval.eval_video_qa`) reads them: ``id`` (= ``question_id``), ``question``, ``answer`` (ground
truth), ``pred`` (the stripped answer), plus ``question_id``, ``video_name``, ``answer_type``, ``model_id`` and
``metadata`` (method, its arguments, budget mode, whether the per-frame [CLS] is kept, ``visual_tokens`` given to
the LLM, ``tokens_per_frame``, frame sampling and transform, decoding settings, checkpoint layout). A missing or
unreadable video stops the run with a message naming it, or, with ``--skip-bad-inputs``, is written as a record
with ``error`` (top level and in ``metadata``) and no ``pred``; the judge counts those as skipped inputs and
``--retry-errors`` reruns them.

Decoding: greedy (the maintainers' fix of the upstream script, videollava.md section 10), ``max_new_tokens`` 1024,
stop at ``</s>``. ``--temperature T > 0`` samples, seeded per batch from ``--seed`` and the first question id
(FasterVLM's video scripts sampled at 0.1, probably with ``top_p`` 0.6 from the hub ``generation_config.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llava.compression.pre_llm import PreLLMMethod
from llava.compression.registry import config_from_args
from llava.constants import MAX_NEW_TOKENS_LONG
from llava.eval.answers import AnswerWriter, refuse_input_as_answers
from llava.eval.inference import GenerationSettings
from llava.eval.questions import QuestionFileError, answer_key, get_chunk
from llava.eval.run_settings import record_settings, run_metadata
from llava.eval.runner import add_run_arguments, main_with_errors
from llava.mm_utils import BadInputError
from llava.model.builder import get_model_name_from_path
from videollava.data.video_io import VideoReadError
from videollava.eval.video_qa_data import VIDEO_EXTENSIONS, VideoQAItem, load_qa_pairs, resolve_video_path
from videollava.model.processing import VIDEO_CONV_MODE, VIDEO_TRANSFORMS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Video-LLaVA zero-shot video QA inference (resumable, chunked)")
    p.add_argument("--model-path", "--model_path", dest="model_path", required=True,
                   help="local Video-LLaVA folder (original or -hf layout)")
    p.add_argument("--video-tower", default=None, help="local LanguageBind_Video_merge folder (original layout)")
    p.add_argument("--image-tower", default=None, help="local LanguageBind_Image folder (original layout)")
    p.add_argument("--video-dir", "--video_dir", dest="video_dir", required=True)
    p.add_argument("--video-prefix", default="", help="file-name prefix of the videos ('v_' for ActivityNet)")
    p.add_argument("--gt-file-question", "--gt_file_question", dest="gt_file_question", required=True)
    p.add_argument("--gt-file-answers", "--gt_file_answers", dest="gt_file_answers", required=True)
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    p.add_argument("--output-name", "--output_name", dest="output_name", required=True,
                   help="answers go to <output-dir>/<output-name>.json (JSON lines)")
    p.add_argument("--num-chunks", "--num_chunks", dest="num_chunks", type=int, default=1)
    p.add_argument("--chunk-idx", "--chunk_idx", dest="chunk_idx", type=int, default=0)
    p.add_argument("--conv-mode", default=VIDEO_CONV_MODE)
    p.add_argument("--video-transform", choices=VIDEO_TRANSFORMS, default=None,
                   help="frame transform (default: languagebind for the original layout, clip for -hf)")
    p.add_argument("--frame-backend", choices=["auto", "decord", "pyav"], default="auto")
    p.add_argument("--vision-hidden-act", choices=["gelu", "quick_gelu"], default=None,
                   help="override the towers' activation (the -hf port's config falls back to quick_gelu; "
                        "LanguageBind uses gelu)")
    add_run_arguments(p, MAX_NEW_TOKENS_LONG, "video")
    video = p.add_argument_group("video compression")
    video.add_argument("--budget-mode", choices=["per-frame", "global"], default=None,
                       help="per-frame (default): the method's budget per frame; global: the same total over the "
                            "whole video (fastervlm)")
    video.add_argument("--keep-cls", action=argparse.BooleanOptionalAction, default=None,
                       help="also give the LLM each frame's [CLS] token (default: no, as FasterVLM's video branch)")
    return p


class _Videos(Dataset):
    """Finds, decodes and preprocesses each item's video in DataLoader workers; errors travel as values."""

    def __init__(self, items: list[VideoQAItem], video_dir: str, prefix: str, processor):
        self.items, self.video_dir, self.prefix, self.processor = items, video_dir, prefix, processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        path = resolve_video_path(self.video_dir, item.video_name, self.prefix)
        if path is None:
            tried = os.path.join(self.video_dir, f"{self.prefix}{item.video_name}{{{','.join(VIDEO_EXTENSIONS)}}}")
            return index, None, f"question {item.question_id!r}: video not found: {tried}"
        try:
            return index, self.processor(path), None
        except VideoReadError as err:
            return index, None, f"question {item.question_id!r}: {err}"


def batch_seed(seed: int, question_id: Any) -> int:
    digest = hashlib.blake2b(f"{seed}:{question_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _validate(args: argparse.Namespace):
    from videollava.model import family as video_family
    from videollava.model.builder import read_video_model_geometry

    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.num_beams)
    settings.validate()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    spec = video_family.check_video_method(args.method, args.budget_mode, args.keep_cls)
    geometry = read_video_model_geometry(args.model_path, args.video_tower)
    method = config_from_args(args, video_family.method_geometry(spec, geometry))
    method = video_family.build_video_config(method, geometry, args.budget_mode, args.keep_cls)
    if not os.path.isdir(args.video_dir):
        raise FileNotFoundError(f"--video-dir {args.video_dir} is not a folder")
    refuse_input_as_answers(answers_path(args), {"--gt-file-question": args.gt_file_question,
                                                 "--gt-file-answers": args.gt_file_answers})
    pairs = load_qa_pairs(args.gt_file_question, args.gt_file_answers)
    if not pairs:
        raise QuestionFileError(f"question file {args.gt_file_question} holds no questions (check --gt-file-question)")
    items = get_chunk(pairs, args.num_chunks, args.chunk_idx)
    return settings, method, items


def answers_path(args: argparse.Namespace) -> str:
    return os.path.join(args.output_dir, f"{args.output_name}.json")


def run_settings_metadata(args: argparse.Namespace, method) -> dict[str, Any]:
    """``metadata.run``: conversation mode and decoding, plus the budget mode and [CLS] choice of a pre-LLM
    method (as ``llava.compression.apply`` on the Video-LLaVA family resolves them)."""
    run = run_metadata(args.conv_mode, args.max_new_tokens, args.temperature, args.top_p, args.num_beams, args.seed)
    if isinstance(method, PreLLMMethod):
        run.update(budget_mode=args.budget_mode or "per-frame", keep_cls=bool(args.keep_cls))
    return run


def run(args: argparse.Namespace) -> None:
    """Validate, resume, load, generate, append. Raises user errors (see ``main_with_errors``) for bad input."""

    settings, method, items = _validate(args)
    answers_file = answers_path(args)
    model_id = get_model_name_from_path(args.model_path)
    run_settings = run_settings_metadata(args, method)
    expected = record_settings({"model_id": model_id, "metadata": {"method": method.name,
                                                                   "method_args": method.to_dict(), "run": run_settings}})
    keys = [_key(it) for it in items]
    with AnswerWriter(answers_file, expected, keys, overwrite=args.overwrite, retry_errors=args.retry_errors) as writer:
        todo = [it for it in items if not writer.is_answered(_key(it))]
        print(f"{len(items)} questions in chunk {args.chunk_idx}/{args.num_chunks}: {len(items) - len(todo)} already "
              f"answered, {len(todo)} to run; method {method.name} {method.to_dict()}"
              + (f", budget {run_settings['budget_mode']}, keep_cls {run_settings['keep_cls']}"
                 if isinstance(method, PreLLMMethod) else ""))
        if todo:
            _answer(args, todo, writer, settings, method, model_id, run_settings, answers_file)


def _key(item: VideoQAItem) -> str:
    return answer_key({"question_id": item.question_id})


def _answer(args: argparse.Namespace, todo: list[VideoQAItem], writer: AnswerWriter, settings: GenerationSettings,
            method, model_id: str, run_settings: dict[str, Any], answers_file: str) -> None:
    """Load the model and answer ``todo`` in order, appending each answer to ``writer``."""
    import llava.compression as vtc
    from videollava.model.builder import load_pretrained_model
    from videollava.model.generation import VideoLlavaGenerator

    torch.manual_seed(args.seed)
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation,
        video_tower=args.video_tower, image_tower=args.image_tower, video_transform=args.video_transform,
        frame_backend=args.frame_backend, vision_hidden_act=args.vision_hidden_act,
    )
    vtc.apply(model, method, budget_mode=args.budget_mode, keep_cls=args.keep_cls)
    generator = VideoLlavaGenerator(tokenizer, model, args.conv_mode, save_kept_tokens=args.save_kept_tokens)
    info = model.videollava_load_info
    base_metadata = {
        **vtc.describe(model),
        "run": run_settings,
        "frames": processor.to_dict(),
        "decoding": {"do_sample": settings.temperature > 0, "temperature": settings.temperature,
                     "top_p": settings.top_p, "num_beams": settings.num_beams,
                     "max_new_tokens": settings.max_new_tokens, "seed": args.seed},
        "layout": info.layout,
        "temporal_attention": info.temporal,
    }

    loader = DataLoader(_Videos(todo, args.video_dir, args.video_prefix, processor), batch_size=args.batch_size,
                        shuffle=False, num_workers=args.num_workers, collate_fn=list)
    visual_total, layer_avg_total, answered, errors, start = 0, 0.0, 0, 0, time.time()
    with tqdm(total=len(todo), unit="q", desc="answering", dynamic_ncols=True) as bar:
        for batch in loader:
            good = [(todo[index], pixels) for index, pixels, error in batch if error is None]
            if not args.skip_bad_inputs:
                for _, _, error in batch:
                    if error is not None:
                        raise BadInputError(error + " (rerun with --skip-bad-inputs to record it and go on)")
            results = {}
            if good:
                seed = batch_seed(args.seed, good[0][0].question_id)
                answers = generator.generate([it.question for it, _ in good], [p for _, p in good], settings, seed)
                results = {id(item): result for (item, _), result in zip(good, answers)}
            for index, _, error in batch:  # written in question order
                item = todo[index]
                if error is not None:
                    writer.write(_record(item, None, model_id, dict(base_metadata, error=error), error), _key(item))
                    errors += 1
                    continue
                result = results[id(item)]
                writer.write(_record(item, result.text, model_id, dict(base_metadata, **result.trace)), _key(item))
                visual_total += result.trace["visual_tokens"]
                layer_avg_total += result.trace.get("avg_visual_tokens", result.trace["visual_tokens"])
                answered += 1
            bar.update(len(batch))
            if answered:
                bar.set_postfix(visual_tokens=f"{visual_total / answered:.1f}")
    elapsed = time.time() - start
    if answered:
        layer_avg = (f" (averaged over the LLM's layers: {layer_avg_total / answered:.1f})"
                     if layer_avg_total != visual_total else "")
        print(f"answered {answered} questions in {elapsed:.1f}s ({elapsed / answered:.2f}s each); average visual "
              f"tokens to the LLM: {visual_total / answered:.1f}{layer_avg}; answers: {answers_file}")
    if errors:
        print(f"{errors} question(s) recorded with an error (missing or unreadable video); see 'error' in "
              f"{answers_file}", file=sys.stderr)


def _record(item: VideoQAItem, pred: str | None, model_id: str, metadata: dict, error: str | None = None) -> dict:
    rec: dict[str, Any] = {"id": item.question_id, "question_id": item.question_id, "video_name": item.video_name,
                           "question": item.question, "answer": item.answer, "answer_type": item.answer_type}
    if error is None:
        rec["pred"] = pred
    else:
        rec["error"] = error
    rec["model_id"] = model_id
    rec["metadata"] = metadata
    return rec


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    main_with_errors(lambda: run(args))


if __name__ == "__main__":
    main()
