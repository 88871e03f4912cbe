"""Tiny random Video-LLaVA-7B-shaped checkpoints for tests and anyone without weights.

    python -m videollava.model.tiny --out DIR [--layout hf|original] [--seed N] [--temporal zero|random]

Video-LLaVA's shape where it matters to token compression: 8 frames of 224 px, patch 14 (256 patches + CLS =
257 tokens per frame, 2,056 per video), a 24-layer CLIP-style tower read at layer -2, an mlp2x_gelu projector, a
small Llama, the llava_v1 prompt. Widths are tiny and weights random: the answers are meaningless, but every code
path (frames, both towers, temporal layers, compression, generation) runs as on the real model.

Layouts (both load with :func:`videollava.model.builder.load_pretrained_model`):

* ``hf``: the ``LanguageBind/Video-LLaVA-7B-hf`` layout (``VideoLlavaConfig``; hub keys ``language_model.model.*``,
  ``video_tower.vision_model.*``, ``image_tower.vision_model.*``, ``multi_modal_projector.*``); tokenizer with
  ``<image>``, ``<video>``, ``<pad>`` added. Its video tower has no temporal layers, as the port. Unlike the real
  port's config, ``vision_config.hidden_act`` is written (``gelu``), so both layouts compute the same function.
* ``original``: the ``LanguageBind/Video-LLaVA-7B`` layout (``LlavaLlamaForCausalLM`` config with ``mm_video_tower``
  / ``mm_image_tower``, two ``pytorch_model-*.bin`` shards that also embed both towers as the released ones do, a
  SentencePiece ``tokenizer.model`` without placeholder tokens) plus the two LanguageBind tower folders (``vision_model.*`` plus unused text
  tensors) as sub-folders. The video tower has the 11 temporal tensors per layer.

``--temporal`` sets those temporal layers: ``zero`` (default) gives a zero temporal embedding and a zero
``temporal_attn.out_proj``, so the temporal sub-layer is the identity and both layouts of one seed load to
identical logits; ``random`` initialises them as LanguageBind did before training (``temporal_attn`` and
``temporal_layer_norm1`` copied from the layer's spatial ones, temporal embedding ~ N(0, D^-1/2)), so frames
interact. Everything else depends on the seed only. As in the released checkpoint, the image tower equals the
video tower except ``class_embedding`` and ``post_layernorm``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_PAD_TOKEN
from llava.model.tiny import (
    build_base_tokenizer,
    preprocessor_config,
    sharpen_attention,
    write_json,
    write_sentencepiece_tokenizer,
)
from videollava.model.builder import video_padded_vocab
from videollava.model.languagebind import VideoLlavaTemporalForConditionalGeneration

DEFAULT_VIDEO_TOKEN = "<video>"
VIDEO_TOWER_FOLDER = "LanguageBind_Video_merge_tiny"
IMAGE_TOWER_FOLDER = "LanguageBind_Image_tiny"
TEMPORAL_MODES = ("zero", "random")


@dataclass(frozen=True)
class TinyVideoGeometry:
    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 8
    vision_hidden: int = 128  # head width 64 as LanguageBind's ViT-L (the embedded-tower fallback assumes it)
    vision_intermediate: int = 256
    vision_layers: int = 24
    vision_heads: int = 2
    text_hidden: int = 128
    text_intermediate: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    base_vocab: int = 448
    text_init_range: float = 0.3  # sharp logits, so greedy decoding is not degenerate (platform pitfall 13)
    qk_scale: float = 4.0  # sharpens the spatial attention so [CLS] scores are not flat


TINY_VIDEO = TinyVideoGeometry()


def add_video_llava_tokens(tok):
    """Add the port's ``<image>`` (V), ``<video>`` (V+1) and ``<pad>`` (V+2); left padding."""
    tok.add_special_tokens({"additional_special_tokens": [DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN]})
    tok.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    tok.padding_side = "left"
    return tok


def _vision_fields(g: TinyVideoGeometry) -> dict:
    return {
        "hidden_size": g.vision_hidden,
        "intermediate_size": g.vision_intermediate,
        "num_hidden_layers": g.vision_layers,
        "num_attention_heads": g.vision_heads,
        "image_size": g.image_size,
        "patch_size": g.patch_size,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": g.vision_hidden,
    }


def _text_fields(g: TinyVideoGeometry) -> dict:
    return {
        "hidden_size": g.text_hidden,
        "intermediate_size": g.text_intermediate,
        "num_hidden_layers": g.text_layers,
        "num_attention_heads": g.text_heads,
        "num_key_value_heads": g.text_kv_heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "initializer_range": g.text_init_range,
    }


def build_tiny_config(g: TinyVideoGeometry = TINY_VIDEO, temporal: bool = True):
    """The ``VideoLlavaConfig`` of the tiny model (``temporal``: with the LanguageBind video tower)."""
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    patches = (g.image_size // g.patch_size) ** 2
    text = LlamaConfig(**_text_fields(g), vocab_size=video_padded_vocab(g.base_vocab), bos_token_id=1,
                       eos_token_id=2, pad_token_id=g.base_vocab + 2, tie_word_embeddings=False)
    cfg = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(**_vision_fields(g)),
        text_config=text,
        image_token_index=g.base_vocab,
        video_token_index=g.base_vocab + 1,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=patches,
        video_seq_length=g.num_frames * (patches + 1),
        multimodal_projector_bias=True,
    )
    if temporal:
        cfg.video_temporal_attention = True
        cfg.video_num_frames = g.num_frames
    return cfg


def build_tiny_state_dict(seed: int = 0, temporal: str = "zero", g: TinyVideoGeometry = TINY_VIDEO):
    """Random weights in transformers' module layout (``model.video_tower.*`` with temporal tensors,
    ``model.image_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.*``)."""
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = VideoLlavaTemporalForConditionalGeneration._from_config(build_tiny_config(g), dtype=torch.float32)
        video, image = model.model.video_tower, model.model.image_tower
        sharpen_attention(video, g.qk_scale)
        with torch.no_grad():
            # as in the released checkpoint the towers share every spatial weight but these
            own = ("embeddings.class_embedding", "post_layernorm.weight", "post_layernorm.bias")
            image_sd = {k: v for k, v in video.state_dict().items() if ".temporal_" not in k and k not in own}
            image.load_state_dict(image_sd, strict=False)
            # temporal layers draw from their own generator, so --temporal leaves every other weight unchanged
            gen = torch.Generator().manual_seed(seed + 7919)
            for layer in video.encoder.layers:
                layer.temporal_layer_norm1.load_state_dict(layer.layer_norm1.state_dict())
                layer.temporal_attn.load_state_dict(layer.self_attn.state_dict())
                if temporal == "zero":
                    layer.temporal_embedding.zero_()
                    layer.temporal_attn.out_proj.weight.zero_()
                    layer.temporal_attn.out_proj.bias.zero_()
                else:
                    layer.temporal_embedding.copy_(
                        torch.randn(layer.temporal_embedding.shape, generator=gen) * g.vision_hidden**-0.5
                    )
            lm = model.model.language_model
            lm.embed_tokens.weight[g.base_vocab :].zero_()
            model.lm_head.weight[g.base_vocab :].zero_()
            model.lm_head.weight[3:259].zero_()  # byte-fallback tokens: greedy answers stay readable words
    finally:
        torch.random.set_rng_state(rng_state)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_hf_layout(out: str, seed: int = 0, g: TinyVideoGeometry = TINY_VIDEO) -> str:
    """The ``Video-LLaVA-7B-hf`` layout of the tiny model (no temporal layers, as the port)."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    hub = {}
    for key, value in build_tiny_state_dict(seed, "zero", g).items():
        if ".temporal_" in key:
            continue
        for prefix, new in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                            ("model.multi_modal_projector.", "multi_modal_projector."),
                            ("model.video_tower.", "video_tower.vision_model."),
                            ("model.image_tower.", "image_tower.vision_model.")):
            if key.startswith(prefix):
                hub[new + key[len(prefix) :]] = value
                break
        else:
            raise AssertionError(f"unexpected key {key}")
    save_file(hub, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = build_tiny_config(g, temporal=False)
    config.architectures = ["VideoLlavaForConditionalGeneration"]
    config.save_pretrained(out)
    add_video_llava_tokens(build_base_tokenizer(g.base_vocab)).save_pretrained(out)
    write_json(os.path.join(out, "preprocessor_config.json"), preprocessor_config(g.image_size))
    write_json(os.path.join(out, "generation_config.json"),
                {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": g.base_vocab + 2})
    return out


def _tower_config(g: TinyVideoGeometry, video: bool) -> dict:
    """A LanguageBind tower ``config.json`` (``CLIPModel`` dual encoder; Video-LLaVA reads the vision side)."""
    vision = dict(_vision_fields(g), add_time_attn=video, num_frames=g.num_frames if video else 1,
                  force_patch_dropout=0.3 if video else 0.0, lora_r=16, lora_alpha=16, lora_dropout=0.1,
                  video_decode_backend="decord", num_mel_bins=0, target_length=0, attention_dropout=0.0,
                  model_type="clip_vision_model")
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64, "add_time_attn": False, "model_type": "clip_text_model"}
    return {"architectures": ["CLIPModel"], "model_type": "LanguageBindVideo" if video else "LanguageBindImage",
            "projection_dim": g.vision_hidden, "logit_scale_init_value": 2.6592, "vision_config": vision,
            "text_config": text, "torch_dtype": "float32"}


def write_original_layout(out: str, seed: int = 0, temporal: str = "zero", g: TinyVideoGeometry = TINY_VIDEO,
                          num_shards: int = 2) -> str:
    """The original ``Video-LLaVA-7B`` layout of the tiny model plus its two LanguageBind tower folders."""
    os.makedirs(out, exist_ok=True)
    sd = build_tiny_state_dict(seed, temporal, g)
    shards: dict[str, torch.Tensor] = {}
    towers: dict[str, dict[str, torch.Tensor]] = {"video": {}, "image": {}}
    for key, value in sd.items():
        if key.startswith("model.language_model."):
            new = "model." + key[len("model.language_model.") :]
            shards[new] = value[: g.base_vocab].clone() if new == "model.embed_tokens.weight" else value
        elif key == "lm_head.weight":
            shards[key] = value[: g.base_vocab].clone()
        elif key.startswith("model.multi_modal_projector.linear_"):
            idx, tail = key[len("model.multi_modal_projector.linear_") :].split(".", 1)
            shards[f"model.mm_projector.{0 if idx == '1' else 2}.{tail}"] = value
        elif key.startswith("model.video_tower."):
            rest = key[len("model.video_tower.") :]
            towers["video"][rest] = value
            shards["model.video_tower.video_tower." + rest] = value  # embedded copy, as in the released shards
        elif key.startswith("model.image_tower."):
            rest = key[len("model.image_tower.") :]
            towers["image"][rest] = value
            shards["model.image_tower.image_tower." + rest] = value
    keys = sorted(shards)
    weight_map: dict[str, str] = {}
    for shard in range(num_shards):
        name = f"pytorch_model-{shard + 1:05d}-of-{num_shards:05d}.bin"
        part = {k: shards[k] for i, k in enumerate(keys) if i * num_shards // len(keys) == shard}
        torch.save(part, os.path.join(out, name))
        weight_map.update({k: name for k in part})
    write_json(os.path.join(out, "pytorch_model.bin.index.json"), {"metadata": {}, "weight_map": weight_map})
    write_json(os.path.join(out, "config.json"), {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "hidden_act": "silu",
        **_text_fields(g),
        "vocab_size": g.base_vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "rope_scaling": None,
        "pretraining_tp": 1,
        "torch_dtype": "float32",
        "use_cache": True,
        "mm_image_tower": IMAGE_TOWER_FOLDER,
        "mm_video_tower": VIDEO_TOWER_FOLDER,
        "mm_hidden_size": g.vision_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "image_grid_pinpoints": None,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "use_mm_proj": True,
    })
    write_json(os.path.join(out, "generation_config.json"),
                {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "temperature": 0.9, "top_p": 0.6})
    write_sentencepiece_tokenizer(out, g.base_vocab)  # tokenizer.model only, as the released checkpoint

    gen = torch.Generator().manual_seed(seed + 104729)
    for what, folder in (("video", VIDEO_TOWER_FOLDER), ("image", IMAGE_TOWER_FOLDER)):
        tower_dir = os.path.join(out, folder)
        os.makedirs(tower_dir, exist_ok=True)
        tensors = {"vision_model." + k: v for k, v in towers[what].items()}
        # unused parts of the LanguageBind dual encoder, which the loader must ignore
        tensors["text_model.embeddings.token_embedding.weight"] = torch.randn(64, 32, generator=gen)
        tensors["visual_projection.weight"] = torch.randn(g.vision_hidden, g.vision_hidden, generator=gen)
        tensors["text_projection.weight"] = torch.randn(g.vision_hidden, 32, generator=gen)
        tensors["logit_scale"] = torch.tensor(2.6592)
        torch.save(tensors, os.path.join(tower_dir, "pytorch_model.bin"))
        write_json(os.path.join(tower_dir, "config.json"), _tower_config(g, what == "video"))
    return out


def write_tiny_checkpoint(out: str, layout: str = "hf", seed: int = 0, temporal: str = "zero") -> str:
    if layout == "hf":
        if temporal != "zero":
            raise ValueError("the hf layout (the transformers port) has no temporal layers; --temporal needs --layout original")
        return write_hf_layout(out, seed)
    if layout == "original":
        return write_original_layout(out, seed, temporal)
    raise ValueError(f"unknown layout {layout!r}; choose 'hf' or 'original'")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--layout", choices=["hf", "original"], default="hf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temporal", choices=TEMPORAL_MODES, default="zero",
                        help="original layout: temporal layers as identity (zero) or active (random)")
    args = parser.parse_args(argv)
    try:
        write_tiny_checkpoint(args.out, args.layout, args.seed, args.temporal)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote tiny Video-LLaVA checkpoint ({args.layout} layout, seed {args.seed}, temporal {args.temporal}) "
          f"to {args.out}")


if __name__ == "__main__":
    main()
