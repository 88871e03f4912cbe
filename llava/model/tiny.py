"""Tiny random LLaVA-1.5-shaped checkpoints for tests, the demo, and anyone without weights.

    python -m llava.model.tiny --out DIR [--layout hf|original] [--seed N] [--family llava|llava-next|qwen2.5-vl]

The model has LLaVA-1.5's shape where it matters to token compression: a CLIP ViT at 336 px with
patch 14 (576 patch tokens + CLS) and 24 layers, features from layer -2, an mlp2x_gelu projector and
a small Llama. Widths are tiny, weights random: its answers are meaningless, but every code path
(preprocessing, 576 image tokens, compression, generation) runs as on the real model.

Layouts (both load with :func:`llava.model.builder.load_pretrained_model`):

* ``hf``: the llava-hf hub layout (``LlavaForConditionalGeneration`` config; weights keyed
  ``language_model.model.*``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``);
  ``tokenizer.json`` built from the same SentencePiece model (merges ordered by score, as llava-hf's) with
  ``<image>`` and ``<pad>`` added; embeddings padded to a multiple of 64.
* ``original``: the ``liuhaotian/llava-v1.5-*`` layout (``LlavaLlamaForCausalLM`` config with
  ``mm_*`` fields, sharded ``pytorch_model-*.bin``, a SentencePiece ``tokenizer.model`` without ``<image>``) plus the
  CLIP tower as a separate CLIP folder named by ``mm_vision_tower`` (here a sub-folder).

``--family llava-next`` writes a tiny LLaVA-NeXT (LLaVA-1.6) instead: the same tower, projector and Llama as a
``LlavaNextForConditionalGeneration`` with LLaVA-1.6's anyres grids and an ``image_newline``; the hf layout is
llava-hf's ``llava-v1.6-vicuna-*-hf``, the original one ``liuhaotian/llava-v1.6-vicuna-*``.

``--family qwen2.5-vl`` writes a tiny ``Qwen2_5_VLForConditionalGeneration`` (hub layout, byte-level BPE tokenizer
with Qwen's special tokens, processor files): see :mod:`llava.model.qwen2_5_vl`.

The same seed gives the same weights, and both layouts of one seed load to identical logits: the
rows the hf layout adds for ``<image>``/``<pad>``/padding are zero, which is also what the loader
fills in for an original checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import dataclass

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_PAD_TOKEN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.conversation import conv_templates
from llava.model.configs import LLAVA_NEXT_GRID_PINPOINTS
from llava.model.original_layout import padded_vocab


@dataclass(frozen=True)
class TinyGeometry:
    image_size: int = 336
    patch_size: int = 14
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_layers: int = 24
    vision_heads: int = 4
    text_hidden: int = 128
    text_intermediate: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    base_vocab: int = 448  # tokenizer vocabulary before <image>/<pad> are added
    text_init_range: float = 0.3  # sharp logits, so greedy decoding is not degenerate (platform pitfall 13)
    qk_scale: float = 6.0  # sharpens CLIP attention so CLS scores are not flat


TINY = TinyGeometry()
CLIP_FOLDER_NAME = "clip-vit-tiny-patch14-336"

# benchmark-style text every tiny tokenizer is trained on (this one's SentencePiece model, Qwen's byte-level BPE)
BENCHMARK_PROMPTS = [
    "Is there a dog in the image? Answer the question using a single word or phrase.",
    "What is the color of the car? Answer with the option's letter from the given choices directly.",
    "Describe this image in detail. How many people are there? What is written on the sign?",
    "Please answer yes or no. Is this a photo of a cat? The answer is A. B. C. D. E.",
    "Context: Options: Question: Which of these states is farthest north? a red circle, a blue square.",
    "When the provided information is insufficient, respond with 'Unanswerable'.",
    "0 1 2 3 4 5 6 7 8 9 10 yes no left right top bottom green yellow white black person table",
]

_CORPUS = [
    *BENCHMARK_PROMPTS,
    # runs of spaces and indentation, so that whitespace-only pieces are learned (as LLaMA has them)
    "The image shows a cat.  It sits on a table.   Two or three spaces between sentences.",
    "    if the answer is yes:  return the letter",
    "        else:    return  the  option  in  the  image",
] + [t.system for t in conv_templates.values()] + ["USER: ASSISTANT: </s>"]


# LLaMA scores its whitespace-only pieces (``▁▁`` = 259, ``▁▁▁▁``, ...) lowest, so SentencePiece merges them last
WHITESPACE_PIECE_SCORE = -1e9
_UNUSED_PIECE_TYPE = 5  # sentencepiece_model.proto: ModelProto.SentencePiece.Type.UNUSED


@functools.lru_cache(maxsize=4)
def train_sentencepiece_model(vocab_size: int = TINY.base_vocab) -> bytes:
    """A LLaMA-like SentencePiece BPE ``tokenizer.model`` (serialized), trained offline on a few prompts in a second.

    As LLaMA's: ids 0/1/2 = ``<unk>``/``<s>``/``</s>``, byte fallback (ids 3..258 = ``<0x00>``..``<0xFF>``; a newline
    is ``<0x0A>``), digits split, identity normalisation with the dummy prefix and no whitespace folding, and
    whitespace-only pieces that score lowest. Unused pieces fill the vocabulary up to ``vocab_size``.
    """
    import io

    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto.FromString(buffer.getvalue())
    if len(proto.pieces) > vocab_size:
        raise AssertionError(f"the trainer made {len(proto.pieces)} pieces, more than {vocab_size}")
    for piece in proto.pieces:
        if len(piece.piece) > 1 and set(piece.piece) == {"▁"}:
            piece.score = WHITESPACE_PIECE_SCORE
    for i in range(vocab_size - len(proto.pieces)):
        proto.pieces.add(piece=f"<unused{i}>", score=0.0, type=_UNUSED_PIECE_TYPE)
    return proto.SerializeToString()


def write_sentencepiece_tokenizer(out: str, vocab_size: int = TINY.base_vocab) -> str:
    """The tokenizer files of the original LLaVA / Video-LLaVA checkpoints: ``tokenizer.model`` (no
    ``tokenizer.json``), ``tokenizer_config.json`` with Vicuna-v1.5's settings and ``special_tokens_map.json``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(train_sentencepiece_model(vocab_size))
    specials = {name: {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
                for name, text in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        **specials,
    })
    write_json(os.path.join(out, "special_tokens_map.json"), {**specials, "pad_token": "<unk>"})
    return out


def build_base_tokenizer(vocab_size: int = TINY.base_vocab):
    """The llava-hf style fast ``LlamaTokenizer`` of :func:`train_sentencepiece_model` (merges ordered by score)."""
    import tempfile

    from llava.model.sentencepiece_tokenizer import fast_tokenizer_from_sentencepiece

    with tempfile.TemporaryDirectory() as folder:
        model_file = os.path.join(write_sentencepiece_tokenizer(folder, vocab_size), "tokenizer.model")
        tok = fast_tokenizer_from_sentencepiece(model_file, legacy=False, add_bos_token=True, add_eos_token=False)
    tok.model_max_length = 4096
    return tok


def add_llava_tokens(tok):
    """Add ``<image>`` and ``<pad>`` as llava-hf does; left padding for batched generation."""
    # llava-hf order: <image> = V, <pad> = V + 1
    tok.add_special_tokens({"additional_special_tokens": [DEFAULT_IMAGE_TOKEN]})
    tok.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    tok.padding_side = "left"
    return tok


def build_llava_config(g: TinyGeometry = TINY):
    """The ``LlavaConfig`` of the tiny model (llava-hf conventions: ``<image>`` = V, ``<pad>`` = V + 1)."""
    from llava.model.configs import clip_vision_config, llama_text_config, llava_config

    vision = clip_vision_config(
        hidden=g.vision_hidden,
        intermediate=g.vision_intermediate,
        layers=g.vision_layers,
        heads=g.vision_heads,
        image_size=g.image_size,
        patch_size=g.patch_size,
        projection_dim=g.vision_hidden,
    )
    text = llama_text_config(
        hidden=g.text_hidden,
        intermediate=g.text_intermediate,
        layers=g.text_layers,
        heads=g.text_heads,
        kv_heads=g.text_kv_heads,
        vocab_size=padded_vocab(g.base_vocab),
        pad_token_id=g.base_vocab + 1,
        init_range=g.text_init_range,
    )
    return llava_config(vision, text, image_token_id=g.base_vocab)


def build_llava_next_config(g: TinyGeometry = TINY):
    """The ``LlavaNextConfig`` of the tiny LLaVA-NeXT model: the tiny LLaVA-1.5 tower, projector and Llama plus
    LLaVA-1.6's anyres grids (so one image is the 576-token base crop plus up to four 576-token crops, as on 7B)."""
    from llava.model.configs import llava_next_config

    base = build_llava_config(g)
    return llava_next_config(base.vision_config, base.text_config, image_token_id=g.base_vocab)


def build_family_config(family: str, g: TinyGeometry = TINY):
    if family == "llava":
        return build_llava_config(g)
    if family == "llava-next":
        return build_llava_next_config(g)
    raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")


FAMILIES = ("llava", "llava-next", "qwen2.5-vl")


def sharpen_attention(vision_tower, scale: float) -> None:
    """Scale the q and k projections of every encoder layer by ``scale`` (in place), so that a random tower's
    attention is peaked, not flat, and [CLS]-attention scores rank patches (platform pitfall 13)."""
    with torch.no_grad():
        for layer in vision_tower.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)


def build_tiny_state_dict(seed: int = 0, g: TinyGeometry = TINY, family: str = "llava") -> dict[str, torch.Tensor]:
    """Random weights of the tiny model in transformers' module layout (``model.language_model.*``,
    ``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``lm_head.*``, and LLaVA-NeXT's
    ``model.image_newline``). Deterministic in ``seed``.
    """
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    config = build_family_config(family, g)
    model_class = LlavaNextForConditionalGeneration if family == "llava-next" else LlavaForConditionalGeneration
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_class._from_config(config, dtype=torch.float32)
        sharpen_attention(model.model.vision_tower, g.qk_scale)
        with torch.no_grad():
            # rows that the original vocabulary does not have are zero in both layouts
            model.model.language_model.embed_tokens.weight[g.base_vocab :].zero_()
            model.lm_head.weight[g.base_vocab :].zero_()
            # byte-fallback tokens (ids 3..258) get zero logits so that greedy answers are readable words
            model.lm_head.weight[3:259].zero_()
    finally:
        torch.random.set_rng_state(generator_state)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def preprocessor_config(image_size: int) -> dict:
    """A CLIP ``preprocessor_config.json`` at ``image_size`` (what the released checkpoints ship)."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
    }


def processor_config(patch_size: int) -> dict:
    """llava-hf's ``processor_config.json``: what ``AutoProcessor`` needs to expand ``<image>`` to 576 tokens."""
    return {
        "processor_class": "LlavaProcessor",
        "image_token": DEFAULT_IMAGE_TOKEN,
        "patch_size": patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def next_preprocessor_config(image_size: int, pinpoints) -> dict:
    """llava-hf's LLaVA-NeXT ``preprocessor_config.json`` (anyres grids, crops of ``image_size``)."""
    return {**preprocessor_config(image_size), "image_processor_type": "LlavaNextImageProcessor",
            "image_grid_pinpoints": [list(p) for p in pinpoints], "do_pad": True}


def write_hf_layout(out: str, seed: int = 0, g: TinyGeometry = TINY, family: str = "llava") -> str:
    """Write the llava-hf layout of the tiny model (``family`` ``"llava"`` or ``"llava-next"``) to ``out``."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    sd = build_tiny_state_dict(seed, g, family)
    hub = {}
    for key, value in sd.items():
        if key == "model.image_newline":
            hub["image_newline"] = value
        elif key.startswith("model.language_model."):
            hub["language_model.model." + key[len("model.language_model.") :]] = value
        elif key.startswith("lm_head."):
            hub["language_model." + key] = value
        elif key.startswith("model.multi_modal_projector."):
            hub[key[len("model.") :]] = value
        elif key.startswith("model.vision_tower."):
            hub["vision_tower.vision_model." + key[len("model.vision_tower.") :]] = value
        else:
            raise AssertionError(f"unexpected key {key}")
    save_file(hub, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = build_family_config(family, g)
    config.architectures = ["LlavaNextForConditionalGeneration" if family == "llava-next" else "LlavaForConditionalGeneration"]
    config.save_pretrained(out)
    tok = add_llava_tokens(build_base_tokenizer(g.base_vocab))
    tok.save_pretrained(out)
    if family == "llava-next":
        write_json(os.path.join(out, "preprocessor_config.json"),
                   next_preprocessor_config(g.image_size, config.image_grid_pinpoints))
        write_json(os.path.join(out, "processor_config.json"),
                   {**processor_config(g.patch_size), "processor_class": "LlavaNextProcessor"})
    else:
        write_json(os.path.join(out, "preprocessor_config.json"), preprocessor_config(g.image_size))
        write_json(os.path.join(out, "processor_config.json"), processor_config(g.patch_size))
    write_json(
        os.path.join(out, "generation_config.json"),
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": g.base_vocab + 1},
    )
    return out


def write_original_layout(
    out: str, seed: int = 0, g: TinyGeometry = TINY, num_shards: int = 2, family: str = "llava"
) -> str:
    """Write the original LLaVA layout (plus its CLIP folder) of the tiny model to ``out``.

    ``family="llava-next"``: the ``liuhaotian/llava-v1.6-vicuna-*`` layout: ``image_aspect_ratio = anyres``,
    ``mm_patch_merge_type = spatial_unpad``, ``image_grid_pinpoints`` (the release's list, read as ``[width, height]``
    by the original code), ``model.image_newline``, and the fine-tuned tower inside the checkpoint
    (``model.vision_tower.vision_tower.vision_model.*``), while the CLIP folder named by ``mm_vision_tower`` holds
    other (pre-fine-tuning) weights that the loader must not use.
    """
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    os.makedirs(out, exist_ok=True)
    sd = build_tiny_state_dict(seed, g, family)
    next_family = family == "llava-next"
    llm, clip_vision = {}, {}
    for key, value in sd.items():
        if key == "model.image_newline":
            llm[key] = value
        elif next_family and key.startswith("model.vision_tower."):
            llm["model.vision_tower.vision_tower.vision_model." + key[len("model.vision_tower.") :]] = value
        elif key.startswith("model.language_model."):
            new = "model." + key[len("model.language_model.") :]
            llm[new] = value[: g.base_vocab].clone() if new == "model.embed_tokens.weight" else value
        elif key == "lm_head.weight":
            llm[key] = value[: g.base_vocab].clone()
        elif key.startswith("model.multi_modal_projector.linear_"):
            rest = key[len("model.multi_modal_projector.linear_") :]
            idx, tail = rest.split(".", 1)
            llm[f"model.mm_projector.{0 if idx == '1' else 2}.{tail}"] = value
        elif key.startswith("model.vision_tower."):
            clip_vision["vision_model." + key[len("model.vision_tower.") :]] = value
    # sharded .bin with an index, as the released checkpoints are
    keys = sorted(llm)
    shard_of, weight_map = {}, {}
    for i, key in enumerate(keys):
        shard = i * num_shards // len(keys)
        shard_of.setdefault(shard, {})[key] = llm[key]
    for shard, tensors in shard_of.items():
        name = f"pytorch_model-{shard + 1:05d}-of-{num_shards:05d}.bin"
        torch.save(tensors, os.path.join(out, name))
        weight_map.update({k: name for k in tensors})
    write_json(os.path.join(out, "pytorch_model.bin.index.json"), {"metadata": {}, "weight_map": weight_map})

    text_cfg = build_llava_config(g).text_config
    write_json(
        os.path.join(out, "config.json"),
        {
            "architectures": ["LlavaLlamaForCausalLM"],
            "model_type": "llava_llama",
            "hidden_act": "silu",
            "hidden_size": text_cfg.hidden_size,
            "intermediate_size": text_cfg.intermediate_size,
            "num_attention_heads": text_cfg.num_attention_heads,
            "num_hidden_layers": text_cfg.num_hidden_layers,
            "num_key_value_heads": text_cfg.num_key_value_heads,
            "max_position_embeddings": text_cfg.max_position_embeddings,
            "rms_norm_eps": text_cfg.rms_norm_eps,
            "initializer_range": text_cfg.initializer_range,
            "vocab_size": g.base_vocab,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "use_cache": True,
            "mm_vision_tower": CLIP_FOLDER_NAME,
            "mm_hidden_size": g.vision_hidden,
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "mm_patch_merge_type": "flat",
            "image_aspect_ratio": "pad",
            "tune_mm_mlp_adapter": False,
            **({"mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "anyres",
                "image_grid_pinpoints": [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS], "image_crop_resolution": 224,
                "unfreeze_mm_vision_tower": True} if next_family else {}),
        },
    )
    write_sentencepiece_tokenizer(out, g.base_vocab)  # tokenizer.model only, as the released checkpoints

    # The CLIP tower: a full CLIPModel folder (with a text tower whose keys the loader discards).
    clip_dir = os.path.join(out, CLIP_FOLDER_NAME)
    vision_cfg = build_llava_config(g).vision_config
    clip_cfg = CLIPConfig(
        text_config=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, bos_token_id=0,
                                   eos_token_id=1, pad_token_id=1,
                                   num_attention_heads=2, vocab_size=64, projection_dim=g.vision_hidden),
        vision_config=vision_cfg.to_dict(),
        projection_dim=g.vision_hidden,
    )
    clip_cfg.architectures = ["CLIPModel"]
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed + 1)
    try:
        clip = CLIPModel._from_config(clip_cfg, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(torch_state)
    keep_own_tower = next_family  # NeXT: the CLIP folder keeps its own random (pre-fine-tuning) tower weights
    clip_sd = {k: v.contiguous() for k, v in clip.state_dict().items()
               if keep_own_tower or not k.startswith("vision_model.")}
    clip_sd.update(clip_vision)
    os.makedirs(clip_dir, exist_ok=True)
    save_file(clip_sd, os.path.join(clip_dir, "model.safetensors"), metadata={"format": "pt"})
    clip_cfg.save_pretrained(clip_dir)
    write_json(os.path.join(clip_dir, "preprocessor_config.json"), preprocessor_config(g.image_size))
    return out


def write_tiny_checkpoint(out: str, layout: str = "hf", seed: int = 0, family: str = "llava") -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
    if family == "qwen2.5-vl":
        if layout != "hf":
            raise ValueError("Qwen2.5-VL has one (hub) layout; drop --layout")
        from llava.model import qwen2_5_vl

        return qwen2_5_vl.write_tiny_checkpoint(out, seed)
    if layout == "hf":
        return write_hf_layout(out, seed, family=family)
    if layout == "original":
        return write_original_layout(out, seed, family=family)
    raise ValueError(f"unknown layout {layout!r}; choose 'hf' or 'original'")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--layout", choices=["hf", "original"], default="hf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=FAMILIES, default="llava",
                        help="llava: LLaVA-1.5 (default); llava-next: LLaVA-NeXT / LLaVA-1.6 (anyres); "
                             "qwen2.5-vl: Qwen2.5-VL (dynamic resolution, M-RoPE; hub layout only)")
    args = parser.parse_args(argv)
    write_tiny_checkpoint(args.out, args.layout, args.seed, args.family)
    name = {"llava-next": "LLaVA-NeXT", "qwen2.5-vl": "Qwen2.5-VL"}.get(args.family, "LLaVA-1.5")
    print(f"wrote tiny {name} checkpoint ({args.layout} layout, seed {args.seed}) to {args.out}")


if __name__ == "__main__":
    main()
