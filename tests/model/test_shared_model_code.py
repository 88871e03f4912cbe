"""What the model families share is written once: the config builder (:mod:`llava.model.configs`) and the checkpoint
utilities (:mod:`llava.model.checkpoint`) serve LLaVA-1.5, Video-LLaVA, the benchmark geometries and the test models.
"""

import pytest
import torch

from llava.bench.geometries import available_geometries, get_geometry
from llava.model.checkpoint import CheckpointError, suppressed_token_ids
from llava.model.original_layout import convert_state_dict, padded_vocab
from llava.model.tiny import TINY, add_llava_tokens, build_base_tokenizer, build_llava_config
from tests.compression.compression_helpers import tiny_llava_config as compression_config
from tests.llm.conftest import llava_config as llm_config
from tests.merging.conftest import llava_config as merging_config
from videollava.model.builder import _split_original_state, video_padded_vocab
from videollava.model.tiny import TINY_VIDEO, add_video_llava_tokens, build_tiny_config


def _patches(config) -> int:
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


@pytest.mark.parametrize("name", ["tiny checkpoint", "compression tests", "llm tests", "merging tests"]
                         + [f"bench {g}" for g in available_geometries() if not get_geometry(g).is_qwen])
def test_every_llava_config_has_one_placeholder_per_patch(name):
    """Every LLaVA config the project builds from shape numbers comes from the one builder, so each has LLaVA-1.5's
    conventions, among them one ``<image>`` placeholder per patch (the test models used to say 576 for any grid)."""
    builders = {"tiny checkpoint": lambda: build_llava_config(TINY), "compression tests": compression_config,
                "llm tests": llm_config, "merging tests": merging_config}
    config = builders[name]() if name in builders else get_geometry(name.split(" ", 1)[1]).to_hf_config()
    assert config.image_seq_length == _patches(config)
    assert (config.projector_hidden_act, config.vision_feature_select_strategy) == ("gelu", "default")
    assert config.multimodal_projector_bias and not config.text_config.tie_word_embeddings
    assert (config.text_config.bos_token_id, config.text_config.eos_token_id) == (1, 2)


def test_one_suppression_rule_serves_both_families():
    """LLaVA's generation and Video-LLaVA's use the same rule: every placeholder the config names (``<image>``, and
    ``<video>`` where there is one), the hf ``<pad>`` and the padding rows are never generated."""
    from llava.eval.inference import suppressed_token_ids as llava_rule
    from videollava.model.generation import suppressed_token_ids as video_rule

    image_tok = add_llava_tokens(build_base_tokenizer(TINY.base_vocab))
    image_cfg = build_llava_config(TINY)
    video_tok = add_video_llava_tokens(build_base_tokenizer(TINY_VIDEO.base_vocab))
    video_cfg = build_tiny_config(TINY_VIDEO)
    for tok, cfg in ((image_tok, image_cfg), (video_tok, video_cfg)):
        expected = sorted({cfg.image_token_id, getattr(cfg, "video_token_id", cfg.image_token_id),
                           tok.pad_token_id, *range(len(tok), cfg.text_config.vocab_size)})
        assert llava_rule(tok, cfg) == video_rule(tok, cfg) == suppressed_token_ids(tok, cfg) == expected
    assert video_cfg.video_token_id in llava_rule(video_tok, video_cfg)


def _original_llm_state(base_vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (base_vocab, 8), "model.layers.0.self_attn.q_proj.weight": (8, 8),
              "model.layers.0.self_attn.rotary_emb.inv_freq": (4,), "model.norm.weight": (8,),
              "model.mm_projector.0.weight": (8, 6), "model.mm_projector.2.bias": (8,),
              "lm_head.weight": (base_vocab, 8), "training_step": (1,)}
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def test_both_layouts_rename_original_llm_keys_alike():
    """The original LLaVA code base's LLM and projector keys map to the same module-layout keys and tensors in both
    loaders; only the vocabulary padding differs (``<image>`` + ``<pad>`` vs ``<image>`` + ``<video>`` + ``<pad>``)."""
    base = 100
    state = _original_llm_state(base)
    image = convert_state_dict(state, None, base)
    video = _split_original_state(state, base)[0]
    assert sorted(image) == sorted(video) == sorted([
        "model.language_model.embed_tokens.weight", "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.norm.weight", "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_2.bias", "lm_head.weight"])
    for key in image:
        rows = image[key].shape[0] if "embed" in key or "lm_head" in key else None
        if rows is None:
            assert torch.equal(image[key], video[key])
        else:
            assert rows == padded_vocab(base) and video[key].shape[0] == video_padded_vocab(base)
            assert torch.equal(image[key][:base], video[key][:base]) and not image[key][base:].any()
    bad = {"model.mm_projector.1.weight": torch.zeros(2)}
    for convert in (lambda: convert_state_dict(bad, None, base), lambda: _split_original_state(bad, base)):
        with pytest.raises(CheckpointError, match="mlp2x_gelu has layers 0 and 2"):
            convert()


@pytest.mark.parametrize("config, family", [
    ({"model_type": "llava", "vision_config": {}, "text_config": {}}, "llava"),
    ({"architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "openai/clip"}, "llava"),
    ({"model_type": "video_llava", "vision_config": {}, "text_config": {}}, "video_llava"),
    ({"architectures": ["LlavaLlamaForCausalLM"], "mm_video_tower": "v", "mm_image_tower": "i"}, "video_llava"),
])
def test_each_loader_names_the_other_family(tmp_path, config, family):
    """One detector knows every family's config markers: each loader reads its own family's checkpoints and refuses
    the other's with one line naming the loader to use (an original Video-LLaVA config also says
    ``LlavaLlamaForCausalLM``, which the image loader used to take for its own)."""
    import json

    from llava.model.original_layout import detect_layout as llava_layout
    from videollava.model.builder import detect_layout as video_layout

    (tmp_path / "config.json").write_text(json.dumps(config))
    own, other = (llava_layout, video_layout) if family == "llava" else (video_layout, llava_layout)
    assert own(config, str(tmp_path)) in ("hf", "original")
    loader = "llava.model.builder" if family == "llava" else "videollava.model.builder"
    with pytest.raises(CheckpointError, match=f"{loader}.load_pretrained_model"):
        other(config, str(tmp_path))
