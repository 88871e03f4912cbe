"""Original LLaVA checkpoints (``liuhaotian/llava-v1.5-*``) -> transformers' ``LlavaForConditionalGeneration``.

The mapping (platform.md Q6), applied in memory at load time:

==========================================================  ==========================================
original                                                    transformers 5.23 module layout
==========================================================  ==========================================
``model.embed_tokens / model.layers.N / model.norm``          ``model.language_model.*``
``lm_head.weight``                                           ``lm_head.weight``
``model.mm_projector.0.*`` / ``model.mm_projector.2.*``       ``model.multi_modal_projector.linear_1/2.*``
CLIP ``vision_model.*`` (separate folder) or                 ``model.vision_tower.*``
``model.vision_tower.vision_tower.vision_model.*``
``*.rotary_emb.inv_freq``, CLIP ``text_model.*``,            dropped
``logit_scale``, ``*_projection``, ``*.position_ids``
==========================================================  ==========================================

The embedding and ``lm_head`` rows grow from the original vocabulary V to llava-hf's size
(V + ``<image>`` + ``<pad>``, rounded up to a multiple of 64) with zero rows: ``<image>`` rows are
overwritten by image features and the generation code suppresses every added id, so their values
never matter.
"""

from __future__ import annotations

import json
import os

import torch

ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
LLAMA_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "hidden_act",
    "initializer_range",
    "attention_bias",
    "mlp_bias",
    "head_dim",
)


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


def detect_layout(config: dict, model_path: str = "") -> str:
    """``"hf"`` (llava-hf / transformers ``LlavaConfig``) or ``"original"`` (``mm_vision_tower`` config)."""
    if "vision_config" in config and "text_config" in config:
        return "hf"
    if "mm_vision_tower" in config or any(a in ORIGINAL_ARCHITECTURES for a in config.get("architectures") or []):
        return "original"
    raise CheckpointError(
        f"{os.path.join(model_path, 'config.json')} is neither a llava-hf checkpoint (expected 'vision_config' "
        "and 'text_config', model_type 'llava') nor an original LLaVA checkpoint (expected 'mm_vision_tower', "
        f"architectures ['LlavaLlamaForCausalLM']); found model_type={config.get('model_type')!r}, "
        f"architectures={config.get('architectures')!r}"
    )


def resolve_vision_tower(config: dict, model_path: str, override: str | None = None) -> str:
    """The local folder of the CLIP tower named by ``mm_vision_tower`` (or ``override``).

    Looked up, in order: the override; the name as a path (absolute, relative to the working directory,
    relative to the model folder); ``checkpoints/<last name component>``; the Hugging Face cache (offline).
    """
    name = override or config.get("mm_vision_tower") or config.get("vision_tower")
    if not name:
        raise CheckpointError(f"{os.path.join(model_path, 'config.json')} has no 'mm_vision_tower' field")
    candidates = [name, os.path.join(model_path, name), os.path.join("checkpoints", os.path.basename(name.rstrip("/")))]
    for cand in candidates:
        if os.path.isfile(os.path.join(cand, "config.json")):
            return cand
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return os.path.dirname(cached)
    except Exception:  # not a repo id, or no cache: fall through to the error
        pass
    where = "--vision-tower" if override else f"'mm_vision_tower' in {os.path.join(model_path, 'config.json')}"
    raise CheckpointError(
        f"vision tower {name!r} ({where}) not found locally; looked in {candidates} and the Hugging Face cache. "
        f"Download it (e.g. openai/clip-vit-large-patch14-336) to checkpoints/{os.path.basename(name.rstrip('/'))} "
        "or pass --vision-tower PATH"
    )


def padded_vocab(base_vocab: int) -> int:
    """llava-hf's embedding size: base vocabulary + <image> + <pad>, rounded up to a multiple of 64."""
    return ((base_vocab + 2 + 63) // 64) * 64


def build_llava_config(config: dict, vision_tower_path: str):
    """A transformers ``LlavaConfig`` equivalent to an original LLaVA ``config.json``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(
            f"mm_projector_type {projector!r} is not supported (LLaVA-1.5 uses 'mlp2x_gelu', which maps onto "
            "transformers' LlavaMultiModalProjector)"
        )
    vision_config = CLIPVisionConfig.from_pretrained(vision_tower_path)
    if config.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise CheckpointError(
            f"mm_hidden_size={config['mm_hidden_size']} in the model config does not match the vision tower at "
            f"{vision_tower_path} (hidden_size={vision_config.hidden_size})"
        )
    base_vocab = int(config["vocab_size"])
    text_kwargs = {k: config[k] for k in LLAMA_FIELDS if config.get(k) is not None}
    text_config = LlamaConfig(
        **text_kwargs,
        vocab_size=padded_vocab(base_vocab),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=base_vocab + 1,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise CheckpointError(f"mm_vision_select_feature {feature!r} is not supported (expected 'patch' or 'cls_patch')")
    llava = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=base_vocab,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if feature == "patch" else "full",
        multimodal_projector_bias=True,
    )
    llava.architectures = ["LlavaForConditionalGeneration"]
    return llava


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
            message = " ".join(str(err).split()) or type(err).__name__
            raise CheckpointError(
                f"cannot read weights from {path}: {message}; the file is damaged or incomplete, download or copy "
                "it again"
            ) from None
    return state


def convert_state_dict(
    llm_state: dict[str, torch.Tensor], vision_state: dict[str, torch.Tensor] | None, base_vocab: int
) -> dict[str, torch.Tensor]:
    """Original LLaVA keys (+ CLIP keys) -> transformers 5.23 module-layout keys; see the module docstring."""
    out: dict[str, torch.Tensor] = {}
    tower_prefix = "model.vision_tower.vision_tower.vision_model."
    for key, value in llm_state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key.startswith(tower_prefix):
            if not key.endswith("position_ids"):
                out["model.vision_tower." + key[len(tower_prefix) :]] = value
        elif key.startswith("model.mm_projector."):
            idx, tail = key[len("model.mm_projector.") :].split(".", 1)
            if idx not in ("0", "2"):
                raise CheckpointError(f"unexpected projector weight {key} (mlp2x_gelu has layers 0 and 2)")
            out[f"model.multi_modal_projector.linear_{1 if idx == '0' else 2}.{tail}"] = value
        elif key.startswith("model."):
            out["model.language_model." + key[len("model.") :]] = value
        elif key == "lm_head.weight":
            out[key] = value
        # anything else (e.g. training-only buffers) is ignored
    if vision_state is not None:
        for key, value in vision_state.items():
            if key.startswith("vision_model.") and not key.endswith("position_ids"):
                out["model.vision_tower." + key[len("vision_model.") :]] = value
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in out:
            out[key] = _pad_rows(out[key], padded_vocab(base_vocab), key)
    return out


def _pad_rows(weight: torch.Tensor, rows: int, key: str) -> torch.Tensor:
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
