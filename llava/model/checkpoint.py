"""Checkpoint utilities every model family's loader shares (LLaVA-1.5, Video-LLaVA, and the next ones).

What is family-independent lives here: reading ``config.json`` and weight files (sharded or single,
``.safetensors`` or ``.bin``, damaged files named), renaming the original LLaVA code base's LLM and projector keys
to transformers' module layout, growing the vocabulary rows, checking a converted state dict and transformers'
loading info, and the token ids never to generate. What differs per family (layout detection, the towers, the
config) stays in the family's builder.
"""

from __future__ import annotations

import json
import os

import torch

ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)  # the original LLaVA code base's config (LLaVA and Video-LLaVA)
ORIGINAL_PROJECTOR_PREFIX = "model.mm_projector."
ORIGINAL_NEWLINE_KEY = "model.image_newline"  # LLaVA-NeXT (LLaVA-1.6) only
EMBEDDING_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded. The message names the file and what was expected."""


def read_config(model_path: str) -> dict:
    path = os.path.join(model_path, "config.json")
    if not os.path.isdir(model_path):
        raise CheckpointError(
            f"model folder not found: {model_path} (download the checkpoint to a local folder, e.g. "
            "checkpoints/llava-v1.5-7b, and pass it as --model-path; `python -m llava.model.tiny --out DIR` "
            "writes a tiny random one)"
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: a LLaVA checkpoint folder needs its config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None



def checkpoint_kind(config: dict) -> tuple[str, str] | None:
    """``(family, layout)`` of a ``config.json``: family ``"llava"``, ``"llava_next"`` or ``"video_llava"``, layout
    ``"hf"`` (the transformers port) or ``"original"`` (the research code base's); ``None`` when it is none of them.

    Video-LLaVA is recognised first: its original config also names ``LlavaLlamaForCausalLM``. LLaVA-NeXT
    (LLaVA-1.6): llava-hf's ``model_type`` ``llava_next`` (or, without a model type, ``image_grid_pinpoints``), or an
    original config whose ``image_aspect_ratio`` is ``anyres`` or whose ``mm_patch_merge_type`` is ``spatial*``.
    """
    if config.get("model_type") == "video_llava" or "video_token_index" in config:
        return "video_llava", "hf"
    if "mm_video_tower" in config:
        return "video_llava", "original"
    if "vision_config" in config and "text_config" in config:
        model_type = config.get("model_type")
        next_hf = model_type == "llava_next" or (model_type is None and "image_grid_pinpoints" in config)
        return ("llava_next" if next_hf else "llava"), "hf"
    if "mm_vision_tower" in config or any(a in ORIGINAL_ARCHITECTURES for a in config.get("architectures") or []):
        anyres = str(config.get("image_aspect_ratio", "")).startswith("anyres")
        spatial = str(config.get("mm_patch_merge_type", "flat")).startswith("spatial")
        return ("llava_next" if anyres or spatial else "llava"), "original"
    return None


def weight_files(folder: str) -> list[str]:
    """The weight files of a checkpoint folder (sharded or single, ``.safetensors`` or ``.bin``), as paths."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(
                    f"{index} is damaged (expected JSON with a 'weight_map' of tensor names to files): {err}"
                ) from None
            break
    else:
        files = [n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(folder, n))]
        files = files[:1]
        if not files:
            files = [n for n in ("mm_projector.bin",) if os.path.isfile(os.path.join(folder, n))]
    if not files:
        raise CheckpointError(
            f"no weights in {folder}: expected model.safetensors, pytorch_model.bin, or a sharded checkpoint "
            "with model.safetensors.index.json / pytorch_model.bin.index.json"
        )
    paths = [os.path.join(folder, name) for name in files]
    for path in paths:
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is listed in the checkpoint index but missing")
        check_weight_file(path)
    return paths


def check_weight_file(path: str) -> None:
    """Reject an empty file, or a ``.safetensors`` file whose header is damaged or whose data is cut short, with
    one message that names the file and the problem (reading only the header)."""
    size = os.path.getsize(path)
    fix = "download or copy it again"
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); {fix}")
    if not path.endswith(".safetensors"):
        return
    with open(path, "rb") as f:
        prefix = f.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if header_len is None or header_len > size - 8:
            raise CheckpointError(
                f"{path} is not a complete safetensors file: its first 8 bytes give a header of "
                f"{header_len if header_len is not None else '?'} bytes but the file has {size}; it is truncated or "
                f"not a safetensors file; {fix}"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path} has a damaged safetensors header ({err}); {fix}") from None
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {data_end} bytes of tensor data but the file holds "
            f"{size - 8 - header_len}; {fix}"
        )


def read_weights(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: sharded or single, ``.safetensors`` or ``.bin``."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            if path.endswith(".safetensors"):
                state.update(load_file(path))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as err:  # corrupt or truncated weight file
            raise CheckpointError(
                f"cannot read weights from {path}: {one_line(err)}; the file is damaged or incomplete, download or copy "
                "it again"
            ) from None
    return state


def pad_rows(weight: torch.Tensor, rows: int, key: str) -> torch.Tensor:
    """``weight`` with zero rows appended up to ``rows`` (a grown vocabulary); more rows than that is an error."""
    if weight.shape[0] > rows:
        raise CheckpointError(f"{key} has {weight.shape[0]} rows, more than the vocabulary size {rows}")
    if weight.shape[0] == rows:
        return weight
    pad = torch.zeros(rows - weight.shape[0], *weight.shape[1:], dtype=weight.dtype)
    return torch.cat([weight, pad], dim=0)


def check_state_shapes(state: dict[str, torch.Tensor], reference, model_path: str, sources: dict[str, str]) -> None:
    """Compare a converted state dict with ``reference`` (a model built on the meta device from the config).

    ``sources`` maps key prefixes to the folder their weights came from, so an error names the right file.
    Raises :class:`CheckpointError` on the first shape mismatch or when weights are missing.
    """
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}

    def source_of(key: str) -> str:
        return next((src for prefix, src in sources.items() if key.startswith(prefix)), model_path)

    for key, value in state.items():
        if key in expected and tuple(value.shape) != expected[key]:
            raise CheckpointError(
                f"shape mismatch for {key} (from {source_of(key)}): found {tuple(value.shape)}, expected {expected[key]} "
                f"from {os.path.join(model_path, 'config.json')}; the weights and the config (or the vision tower) "
                "do not belong together"
            )
    missing = sorted(k for k in expected if k not in state)
    if missing:
        raise CheckpointError(
            f"weights missing (from {', '.join(sorted(set(map(source_of, missing))))}): {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + "; is this a projector-only checkpoint that needs --model-base?"
        )


def rename_original_llm_key(key: str) -> str | None:
    """The module-layout key of an original LLaVA-code-base LLM or projector weight, ``None`` for what is dropped.

    ``model.embed_tokens / layers / norm`` -> ``model.language_model.*``; ``model.mm_projector.0/2.*`` ->
    ``model.multi_modal_projector.linear_1/2.*``; LLaVA-NeXT's ``model.image_newline`` stays; ``lm_head.weight`` stays; ``*.rotary_emb.inv_freq`` and keys
    outside ``model.`` (training-only buffers) are dropped. Vision-tower keys are the caller's to handle first.
    """
    if key.endswith("rotary_emb.inv_freq"):
        return None
    if key == ORIGINAL_NEWLINE_KEY:
        return key  # LLaVA-NeXT's row separator: the same name in transformers' LlavaNextModel
    if key.startswith(ORIGINAL_PROJECTOR_PREFIX):
        idx, tail = key[len(ORIGINAL_PROJECTOR_PREFIX) :].split(".", 1)
        if idx not in ("0", "2"):
            raise CheckpointError(f"unexpected projector weight {key} (mlp2x_gelu has layers 0 and 2)")
        return f"model.multi_modal_projector.linear_{1 if idx == '0' else 2}.{tail}"
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    if key == "lm_head.weight":
        return key
    return None


def pad_embedding_rows(state: dict[str, torch.Tensor], rows: int) -> None:
    """Grow the input embeddings and ``lm_head`` of a module-layout ``state`` to ``rows`` rows, in place."""
    for key in EMBEDDING_KEYS:
        if key in state:
            state[key] = pad_rows(state[key], rows, key)


def check_loading_info(info: dict, model_path: str) -> None:
    """Refuse what ``from_pretrained(..., output_loading_info=True)`` reports as mismatched or missing."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        raise CheckpointError(f"shape mismatch in {model_path}: {list(mismatched)[:5]}")
    if missing:
        raise CheckpointError(
            f"weights missing from {model_path}: {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )


def suppressed_token_ids(tokenizer, config) -> list[int]:
    """Ids never to generate: the placeholders (``<image>``, and ``<video>`` where the config has one), the hf
    ports' ``<pad>`` and the rows added to reach a multiple of 64. Suppressing them makes both layouts of a
    checkpoint decode identically and keeps placeholders out of answers."""
    vocab = config.text_config.vocab_size
    ids = set(range(len(tokenizer), vocab))
    ids.update(placeholder_token_ids(config))
    pad = tokenizer.pad_token_id
    if pad is not None and pad not in (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        ids.add(pad)
    return sorted(i for i in ids if i < vocab)


def placeholder_token_ids(config) -> list[int]:
    """The ids the model's placeholders have (``image_token_id``, ``video_token_id``), as its config names them."""
    names = ("image_token_id", "video_token_id")
    return [int(value) for value in (getattr(config, name, None) for name in names) if value is not None]


def one_line(err: BaseException) -> str:
    """An exception's message on one line (for the one-line errors the loaders raise)."""
    return " ".join(str(err).split()) or type(err).__name__
