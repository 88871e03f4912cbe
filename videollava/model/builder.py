"""Load Video-LLaVA-7B in either layout into transformers' ``VideoLlavaForConditionalGeneration`` family.

    tokenizer, model, video_processor, context_len = load_pretrained_model("checkpoints/Video-LLaVA-7B")

Layouts (detected from ``config.json``):

``hf``: the transformers port (``LanguageBind/Video-LLaVA-7B-hf``; ``model_type "video_llava"``; weights keyed
    ``language_model.model.*``, ``video_tower.vision_model.*``, ...). Loaded with ``from_pretrained`` as is: its
    video tower is a plain per-frame CLIP (the port dropped the temporal layers, videollava.md section 7).
``original``: ``LanguageBind/Video-LLaVA-7B`` (``LlavaLlamaForCausalLM`` config with ``mm_video_tower`` /
    ``mm_image_tower``, sharded ``pytorch_model-*.bin``). Built as :class:`VideoLlavaTemporalForConditionalGeneration`,
    whose video tower is the LanguageBind tower **with** its temporal-attention sub-layers. Weights (section 6.5):

    ==========================================  ==========================================================
    original                                     module layout
    ==========================================  ==========================================================
    ``model.embed_tokens/layers/norm``            ``model.language_model.*``
    ``lm_head.weight``                            ``lm_head.weight``
    ``model.mm_projector.0/2.*``                  ``model.multi_modal_projector.linear_1/2.*``
    tower folder ``vision_model.*`` (fp32), or    ``model.video_tower.*`` (temporal tensors included)
    ``model.video_tower.video_tower.*`` (bf16)
    tower folder ``vision_model.*``, or           ``model.image_tower.*``
    ``model.image_tower.image_tower.*``
    ``*.inv_freq``, ``*.position_ids``,            dropped
    LanguageBind ``text_model.*`` etc.
    ==========================================  ==========================================================

    The towers are looked up by name (``mm_video_tower`` = ``LanguageBind/LanguageBind_Video_merge``): the
    ``video_tower`` / ``image_tower`` argument, the name as a path, relative to the model folder,
    ``checkpoints/<last name component>``, the Hugging Face cache, upstream's ``./cache_dir``. The folder's fp32
    ``vision_model.*`` tensors are preferred (what the original loads); without a folder, or with a folder holding
    only ``config.json``, the bf16 copies embedded in the shards are used (small feature drift; reported in the load
    info). Without a folder the tower config is inferred from the weights (head width 64 and exact GELU, as
    LanguageBind's ViT-L/14).

    The vocabulary ``V`` grows to the port's: ``<image>`` = V, ``<video>`` = V+1, ``<pad>`` = V+2, rounded up to a
    multiple of 64 with zero rows (never generated: :func:`suppressed_token_ids`).

Both layouts return the same tokenizer conventions (left padding, a pad token) and a
:class:`~videollava.model.processing.VideoProcessor` (``languagebind`` transform for the original layout, the port's
``clip`` transform for the hf layout, unless ``video_transform`` says otherwise).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass

import torch

from llava.compression.registry import ModelGeometry
from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.model.builder import load_tokenizer, resolve_device, resolve_dtype
from llava.model.checkpoint import (  # noqa: F401  (suppressed_token_ids: re-exported for the generation module)
    check_loading_info,
    checkpoint_kind,
    one_line,
    pad_embedding_rows,
    rename_original_llm_key,
    suppressed_token_ids,
)
from llava.model.original_layout import (
    LLAMA_FIELDS,
    CheckpointError,
    check_state_shapes,
    read_config,
    read_weights,
    resolve_vision_tower,
    weight_files,
)
from videollava.model.languagebind import DEFAULT_NUM_FRAMES, VideoLlavaTemporalForConditionalGeneration
from videollava.model.processing import VIDEO_TRANSFORMS, VideoProcessor

logger = logging.getLogger(__name__)

VIDEO_TOWER_PREFIX = "model.video_tower.video_tower."
IMAGE_TOWER_PREFIX = "model.image_tower.image_tower."
_CLIP_VISION_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels", "image_size",
    "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout", "initializer_range", "initializer_factor",
    "projection_dim",
)
# fields both towers must agree on (the port gives them one vision_config)
_SHARED_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps")


@dataclass(frozen=True)
class VideoLoadedInfo:
    """How a checkpoint was loaded (kept on ``model.videollava_load_info``).

    layout: ``"hf"`` or ``"original"``. temporal: the video tower runs LanguageBind's temporal layers.
    video_tower / image_tower: the tower folder used, or ``None`` (hf layout, or embedded weights without a folder).
    video_tower_weights / image_tower_weights: ``"folder"`` (fp32 LanguageBind files), ``"embedded"`` (the copies in
    the model shards) or ``"checkpoint"`` (hf layout).
    towers_share_spatial_weights: the two towers differ only in ``class_embedding`` / ``post_layernorm`` (true for
    the released checkpoint; ``None`` when not checked).
    """

    layout: str
    model_path: str
    temporal: bool
    num_frames: int
    video_tower: str | None
    image_tower: str | None
    video_tower_weights: str
    image_tower_weights: str
    towers_share_spatial_weights: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# -- layout detection and config ---------------------------------------------------------------------------------


def detect_layout(config: dict, model_path: str = "") -> str:
    """``"hf"`` (``model_type "video_llava"``) or ``"original"`` (``mm_video_tower``); anything else raises."""
    path = os.path.join(model_path, "config.json")
    kind = checkpoint_kind(config)
    if kind == ("video_llava", "hf"):
        if "vision_config" not in config or "text_config" not in config:
            raise CheckpointError(f"{path} says model_type 'video_llava' but lacks 'vision_config' / 'text_config'")
        return "hf"
    if kind == ("video_llava", "original"):
        return "original"
    if kind is not None and kind[0] in ("llava", "llava_next") and (kind[1] == "hf" or "mm_vision_tower" in config):
        raise CheckpointError(
            f"{path} is an image LLaVA checkpoint (model_type={config.get('model_type')!r}), not Video-LLaVA: it has "
            "no video tower. Load it with llava.model.builder.load_pretrained_model"
        )
    raise CheckpointError(
        f"{path} is neither the transformers Video-LLaVA port (expected model_type 'video_llava' with "
        "'vision_config' and 'text_config') nor an original Video-LLaVA checkpoint (expected 'mm_video_tower' and "
        f"architectures ['LlavaLlamaForCausalLM']); found model_type={config.get('model_type')!r}, "
        f"architectures={config.get('architectures')!r}"
    )


def video_padded_vocab(base_vocab: int) -> int:
    """The port's embedding size: base vocabulary + ``<image>``, ``<video>``, ``<pad>``, rounded up to 64."""
    return ((base_vocab + 3 + 63) // 64) * 64


def resolve_tower(name: str | None, model_path: str, override: str | None, what: str) -> str | None:
    """The local folder of a LanguageBind tower (see the module docstring), or ``None`` when not found."""
    name = override or name
    if not name:
        return None
    try:
        return resolve_vision_tower({"mm_vision_tower": name}, model_path, None)
    except CheckpointError:
        if override:
            raise CheckpointError(f"--{what}-tower {override}: no config.json there") from None
    try:  # upstream Video-LLaVA downloads the towers with cache_dir="./cache_dir"
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", cache_dir="cache_dir")
        if isinstance(cached, str):
            return os.path.dirname(cached)
    except Exception:  # not a repo id, or no such cache
        pass
    return None


def read_tower_config(folder: str) -> tuple[dict, bool, int]:
    """``(vision fields, temporal, num_frames)`` of a tower folder: a LanguageBind / ``CLIPModel`` folder (with a
    ``vision_config``) or a ``CLIPVisionModel`` folder. ``temporal`` is LanguageBind's ``add_time_attn``."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read the tower config {path}: {err}") from None
    vision = raw.get("vision_config", raw)
    if not isinstance(vision, dict) or "hidden_size" not in vision:
        raise CheckpointError(f"{path} has no vision config (expected 'vision_config' with 'hidden_size')")
    fields = {k: vision[k] for k in _CLIP_VISION_FIELDS if vision.get(k) is not None}
    if "hidden_act" not in fields and str(raw.get("model_type", "")).lower().startswith("languagebind"):
        fields["hidden_act"] = "gelu"  # LanguageBind's towers use the exact GELU (videollava.md 2.1)
    temporal = bool(vision.get("add_time_attn", False))
    num_frames = int(vision.get("num_frames", DEFAULT_NUM_FRAMES) or DEFAULT_NUM_FRAMES) if temporal else 1
    return fields, temporal, num_frames


def infer_tower_config(state: dict[str, torch.Tensor], source: str) -> tuple[dict, bool, int]:
    """Tower geometry from its weights (no config folder): head width 64, exact GELU (LanguageBind ViT)."""
    try:
        width = state["embeddings.class_embedding"].shape[0]
        patch = state["embeddings.patch_embedding.weight"].shape[-1]
        positions = state["embeddings.position_embedding.weight"].shape[0]
        inter = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"the tower weights in {source} lack {err}; is this a CLIP vision tower?") from None
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    side = math.isqrt(positions - 1)
    temporal = "encoder.layers.0.temporal_embedding" in state
    num_frames = int(state["encoder.layers.0.temporal_embedding"].shape[1]) if temporal else 1
    fields = {"hidden_size": width, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": max(1, width // 64), "image_size": side * patch, "patch_size": patch,
              "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    return fields, temporal, num_frames


def _llama_config(config: dict):
    from transformers import LlamaConfig

    base_vocab = int(config["vocab_size"])
    return LlamaConfig(
        **{k: config[k] for k in LLAMA_FIELDS if config.get(k) is not None},
        vocab_size=video_padded_vocab(base_vocab),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=base_vocab + 2,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def build_video_llava_config(config: dict, vision_fields: dict, temporal: bool, num_frames: int):
    """A ``VideoLlavaConfig`` equivalent to an original Video-LLaVA ``config.json`` (+ the tower geometry).

    Extra fields: ``video_temporal_attention`` (the video tower has LanguageBind's temporal layers) and
    ``video_num_frames`` (T).
    """
    from transformers import CLIPVisionConfig, VideoLlavaConfig

    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(
            f"mm_projector_type {projector!r} is not supported (Video-LLaVA uses 'mlp2x_gelu', which maps onto "
            "transformers' VideoLlavaMultiModalProjector)"
        )
    if config.get("mm_hidden_size", vision_fields["hidden_size"]) != vision_fields["hidden_size"]:
        raise CheckpointError(
            f"mm_hidden_size={config['mm_hidden_size']} in the model config does not match the video tower "
            f"(hidden_size={vision_fields['hidden_size']})"
        )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise CheckpointError(f"mm_vision_select_feature {feature!r} is not supported (expected 'patch' or 'cls_patch')")
    base_vocab = int(config["vocab_size"])
    vision = CLIPVisionConfig(**vision_fields)
    patches = (vision.image_size // vision.patch_size) ** 2
    cfg = VideoLlavaConfig(
        vision_config=vision,
        text_config=_llama_config(config),
        image_token_index=base_vocab,
        video_token_index=base_vocab + 1,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        # images honour mm_vision_select_feature; video always keeps the CLS (videollava.md 2.3)
        vision_feature_select_strategy="default" if feature == "patch" else "full",
        image_seq_length=patches + (feature == "cls_patch"),
        video_seq_length=num_frames * (patches + 1),
        multimodal_projector_bias=True,
        video_temporal_attention=temporal,
        video_num_frames=num_frames if temporal else DEFAULT_NUM_FRAMES,
    )
    cfg.architectures = ["VideoLlavaForConditionalGeneration"]
    return cfg


# -- weights ----------------------------------------------------------------------------------------------------


def _has_weight_files(folder: str) -> bool:
    names = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    return any(os.path.isfile(os.path.join(folder, n)) for n in names)


def _strip_tower_keys(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` (an optional ``vision_model.`` after it removed), minus buffers."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        rest = rest[len("vision_model.") :] if rest.startswith("vision_model.") else rest
        if not rest.endswith("position_ids"):
            out[rest] = value
    return out


def _folder_tower_weights(folder: str) -> dict[str, torch.Tensor]:
    state = read_weights(folder)
    tower = _strip_tower_keys(state, "vision_model.")
    if not tower:  # a CLIPVisionModel saved without the prefix
        tower = {k: v for k, v in state.items() if k.split(".")[0] in ("embeddings", "pre_layrnorm", "encoder",
                                                                        "post_layernorm")
                 and not k.endswith("position_ids")}
    if not tower:
        raise CheckpointError(f"no vision tower weights in {folder} (expected 'vision_model.*' keys)")
    return tower


def _split_original_state(llm_state: dict[str, torch.Tensor], base_vocab: int):
    """Original shard keys -> (module-layout LLM + projector keys, embedded video tower, embedded image tower)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in llm_state.items():
        if key.startswith((VIDEO_TOWER_PREFIX, IMAGE_TOWER_PREFIX)):
            continue
        if (renamed := rename_original_llm_key(key)) is not None:
            out[renamed] = value
    pad_embedding_rows(out, video_padded_vocab(base_vocab))
    return out, _strip_tower_keys(llm_state, VIDEO_TOWER_PREFIX), _strip_tower_keys(llm_state, IMAGE_TOWER_PREFIX)


@dataclass
class _Tower:
    folder: str | None
    source: str  # "folder" | "embedded"
    state: dict[str, torch.Tensor]
    fields: dict
    temporal: bool
    num_frames: int


def _load_tower(name: str | None, override: str | None, embedded: dict, model_path: str, what: str) -> _Tower:
    folder = resolve_tower(name, model_path, override, what)
    if folder is not None:
        fields, temporal, num_frames = read_tower_config(folder)
        if _has_weight_files(folder):
            return _Tower(folder, "folder", _folder_tower_weights(folder), fields, temporal, num_frames)
        if embedded:
            return _Tower(folder, "embedded", embedded, fields, temporal, num_frames)
        raise CheckpointError(
            f"the {what} tower folder {folder} has no weights and {model_path} embeds no {what} tower "
            f"('{VIDEO_TOWER_PREFIX if what == 'video' else IMAGE_TOWER_PREFIX}*' keys)"
        )
    if embedded:
        fields, temporal, num_frames = infer_tower_config(embedded, model_path)
        logger.warning(
            "%s tower %r not found locally: using the copy embedded in %s (bf16 in the released checkpoint: small "
            "feature drift from the fp32 LanguageBind weights the original loads) with a geometry inferred from "
            "its weights", what, name, model_path,
        )
        return _Tower(None, "embedded", embedded, fields, temporal, num_frames)
    short = os.path.basename((name or f"LanguageBind_{what}").rstrip("/"))
    raise CheckpointError(
        f"{what} tower {name!r} ('mm_{what}_tower' in {os.path.join(model_path, 'config.json')}) not found locally and "
        f"{model_path} embeds no copy ('{VIDEO_TOWER_PREFIX if what == 'video' else IMAGE_TOWER_PREFIX}*' keys). "
        f"Download it to checkpoints/{short} or pass --{what}-tower PATH"
    )


def _check_temporal_keys(tower: _Tower, model_path: str) -> None:
    has = any(".temporal_" in k for k in tower.state)
    where = tower.folder if tower.source == "folder" else model_path
    if tower.temporal and not has:
        raise CheckpointError(
            f"the video tower config says add_time_attn=true but the weights from {where} have no temporal layers "
            "(e.g. encoder.layers.0.temporal_attn.q_proj.weight); a tower converted for the -hf port lost them"
        )
    if has and not tower.temporal:
        raise CheckpointError(
            f"the video tower weights from {where} hold temporal-attention layers but its config "
            f"({tower.folder or 'inferred'}) has no add_time_attn=true; they would be dropped silently"
        )


def _towers_share_spatial(video: dict, image: dict) -> bool:
    skip = ("class_embedding", "post_layernorm", ".temporal_")
    keys = [k for k in image if not any(s in k for s in skip)]
    return all(k in video and video[k].shape == image[k].shape and torch.equal(video[k], image[k]) for k in keys)


# -- loading -----------------------------------------------------------------------------------------------------


def load_pretrained_model(
    model_path: str,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str = "sdpa",
    video_tower: str | None = None,
    image_tower: str | None = None,
    device_map: str | dict | None = None,
    video_transform: str | None = None,
    frame_backend: str = "auto",
    vision_hidden_act: str | None = None,
):
    """Load Video-LLaVA of either layout.

    Args:
        model_path: a local folder in the hf (port) or original layout.
        device, dtype, attn_implementation, device_map: as :func:`llava.model.builder.load_pretrained_model`
            (``dtype="auto"``: fp16 on GPU as the original evaluation, fp32 on CPU).
        video_tower / image_tower: local LanguageBind folders overriding ``mm_video_tower`` / ``mm_image_tower``.
        video_transform: ``"languagebind"`` or ``"clip"``; default: ``languagebind`` for the original layout, ``clip``
            (the port's processor) for the hf layout.
        frame_backend: frame reader (``auto``, ``decord``, ``pyav``).
        vision_hidden_act: override the towers' activation, e.g. ``"gelu"`` for the hf port, whose config omits
            ``hidden_act`` so that CLIP's default ``quick_gelu`` applies although LanguageBind uses the exact GELU.

    Returns:
        ``(tokenizer, model, video_processor, context_len)``; ``model.videollava_load_info`` is a
        :class:`VideoLoadedInfo`.

    Raises:
        CheckpointError: a folder of neither layout (or an image LLaVA), a missing tower, weight file or weight, a
            shape mismatch, or temporal weights that would be dropped (the message names the file and expectation).
    """
    from transformers import VideoLlavaForConditionalGeneration

    if not os.path.isdir(model_path):
        raise CheckpointError(
            f"model folder not found: {model_path} (download LanguageBind/Video-LLaVA-7B or its -hf port to a local "
            "folder and pass it as --model-path; `python -m videollava.model.tiny --out DIR` writes a tiny random one)"
        )
    config = read_config(model_path)
    layout = detect_layout(config, model_path)
    if video_transform is not None and video_transform not in VIDEO_TRANSFORMS:
        raise ValueError(f"unknown video transform {video_transform!r}; choose one of {VIDEO_TRANSFORMS}")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    load_kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation,
                   "device_map": device_map if device_map is not None else {"": device}}

    tokenizer = load_tokenizer(model_path)  # before the weights: a missing file fails fast
    if layout == "hf":
        if video_tower or image_tower:
            raise CheckpointError("--video-tower / --image-tower only apply to original-layout checkpoints")
        weight_files(model_path)  # a missing, empty, truncated or damaged weight file is named before loading
        try:
            model, loading = VideoLlavaForConditionalGeneration.from_pretrained(
                model_path, output_loading_info=True, **load_kwargs
            )
        except Exception as err:  # e.g. SafetensorError: one line naming the folder, never a traceback
            raise CheckpointError(f"cannot load the Video-LLaVA (hf) checkpoint in {model_path}: {one_line(err)}") from None
        unexpected = [k for k in loading.get("unexpected_keys") or [] if "temporal" in k]
        if unexpected:
            raise CheckpointError(
                f"{model_path} holds temporal-attention weights ({unexpected[:3]}) that the transformers port "
                "cannot use; convert it to the original layout or load the original checkpoint"
            )
        check_loading_info(loading, model_path)
        info = VideoLoadedInfo("hf", model_path, False, DEFAULT_NUM_FRAMES, None, None, "checkpoint", "checkpoint")
    else:
        base_vocab = int(config["vocab_size"])
        llm, embedded_video, embedded_image = _split_original_state(read_weights(model_path), base_vocab)
        vt = _load_tower(config.get("mm_video_tower"), video_tower, embedded_video, model_path, "video")
        it = _load_tower(config.get("mm_image_tower"), image_tower, embedded_image, model_path, "image")
        _check_temporal_keys(vt, model_path)
        if it.temporal or any(".temporal_" in k for k in it.state):
            raise CheckpointError(f"the image tower ({it.folder or model_path}) has temporal layers; expected a plain "
                                  "CLIP vision transformer (LanguageBind_Image)")
        diff = [k for k in _SHARED_VISION_FIELDS if vt.fields.get(k) != it.fields.get(k)]
        if diff:
            raise CheckpointError(
                "the video and image towers differ in " + ", ".join(
                    f"{k} ({vt.fields.get(k)!r} vs {it.fields.get(k)!r})" for k in diff)
                + f" (video: {vt.folder or 'embedded'}, image: {it.folder or 'embedded'}); the port model needs one "
                "vision geometry for both"
            )
        llava_config = build_video_llava_config(config, vt.fields, vt.temporal, vt.num_frames)
        state = dict(llm)
        state.update({"model.video_tower." + k: v for k, v in vt.state.items()})
        state.update({"model.image_tower." + k: v for k, v in it.state.items()})
        sources = {"model.video_tower.": vt.folder if vt.source == "folder" else model_path,
                   "model.image_tower.": it.folder if it.source == "folder" else model_path}
        with torch.device("meta"):
            reference = VideoLlavaTemporalForConditionalGeneration(llava_config)
        check_state_shapes(state, reference, model_path, sources)
        share = _towers_share_spatial(vt.state, it.state)
        model, loading = VideoLlavaTemporalForConditionalGeneration.from_pretrained(
            None, config=llava_config, state_dict=state, output_loading_info=True, **load_kwargs
        )
        check_loading_info(loading, model_path)
        dropped = sorted(k for k in loading.get("unexpected_keys") or [] if k.startswith(tuple(sources)))
        if dropped:  # e.g. unmerged LoRA tensors: never drop tower weights silently
            raise CheckpointError(
                f"tower weights that the model has no place for: {dropped[:5]}"
                + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
                + f" (from {sorted({sources[p] for p in sources if any(k.startswith(p) for k in dropped)})})"
            )
        info = VideoLoadedInfo("original", model_path, vt.temporal, vt.num_frames, vt.folder, it.folder,
                               vt.source, it.source, share)

    if vision_hidden_act is not None:
        model.config.vision_config.hidden_act = vision_hidden_act
        from transformers.activations import ACT2FN

        for tower in (model.model.video_tower, model.model.image_tower):
            for layer in tower.encoder.layers:
                layer.mlp.activation_fn = ACT2FN[vision_hidden_act]
    model.eval()
    model.videollava_load_info = info
    _check_special_tokens(tokenizer, model.config, model_path)
    transform = video_transform or ("languagebind" if layout == "original" else "clip")
    vc = model.config.vision_config
    processor = VideoProcessor(transform, size=vc.image_size, num_frames=info.num_frames,
                               mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, backend=frame_backend)
    context_len = int(getattr(model.config.text_config, "max_position_embeddings", 2048))
    return tokenizer, model, processor, context_len


def _check_special_tokens(tokenizer, config, model_path: str) -> None:
    vocab = tokenizer.get_vocab()
    for name, expected in (("<image>", config.image_token_id), ("<video>", config.video_token_id)):
        if name in vocab and vocab[name] != expected:
            raise CheckpointError(
                f"the tokenizer in {model_path} maps {name} to id {vocab[name]} but the config says {expected}; the "
                "tokenizer and the config do not belong together"
            )
    if tokenizer.pad_token_id in (config.image_token_id, config.video_token_id):
        raise CheckpointError(f"the tokenizer in {model_path} pads with a placeholder id ({tokenizer.pad_token_id})")


def read_video_model_geometry(model_path: str, video_tower: str | None = None) -> ModelGeometry:
    """Per-frame :class:`ModelGeometry` (patches of one frame, encoder / LLM layers, feature layer) from the config
    files only, so that method arguments are validated before any weights load. For an original checkpoint
    without a tower folder, LanguageBind's ViT-L/14-224 geometry is assumed."""
    config = read_config(model_path)
    if detect_layout(config, model_path) == "hf":
        vision, text = config["vision_config"], config["text_config"]
        image_size, patch = vision.get("image_size", 224), vision.get("patch_size", 14)
        vision_layers, llm_layers = vision.get("num_hidden_layers", 24), text.get("num_hidden_layers", 32)
        feature_layer = config.get("vision_feature_layer", -2)
    else:
        folder = resolve_tower(config.get("mm_video_tower"), model_path, video_tower, "video")
        fields = read_tower_config(folder)[0] if folder else {}
        image_size, patch = fields.get("image_size", 224), fields.get("patch_size", 14)
        vision_layers = fields.get("num_hidden_layers", 24)
        llm_layers = config.get("num_hidden_layers", 32)
        feature_layer = config.get("mm_vision_select_layer", -2)
    side = image_size // patch
    return ModelGeometry(num_patches=side * side, grid=(side, side), vision_layers=vision_layers,
                         llm_layers=llm_layers, vision_feature_layer=feature_layer)
