"""ToMe / FiCoCo through the evaluation entry points on the tiny checkpoint (CLIP 24 layers, 576 patches)."""

from __future__ import annotations

import pytest

from llava.compression.registry import CompressionConfigError, ModelGeometry, config_from_args
from llava.eval import model_vqa_loader
from llava.eval.runner import build_parser
from tests.conftest import read_jsonl, write_vqa_questions

TINY = ModelGeometry(llm_layers=4)  # the tiny checkpoint: CLIP-L/336 geometry, 4 decoder layers


def _args(*flags: str):
    return build_parser("t", 8).parse_args(
        ["--model-path", "m", "--question-file", "q", "--answers-file", "a", *flags]
    )


def test_cli_flags_build_the_configs():
    c = config_from_args(_args("--method", "ficoco-v", "--visual-token-num", "128"), TINY)
    assert c.per_layer(TINY) == [41] * 8 + [40] * 3 and c.ficoco_start_layer == 12
    c = config_from_args(_args("--method", "ficoco-v", "--ficoco-r", "42", "--ficoco-reference-quirks"), TINY)
    assert c.final_count(TINY) == 114 and c.ficoco_reference_quirks and c.direction == "sent"
    c = config_from_args(
        _args("--method", "ficoco-l", "--ficoco-start-layer", "2", "--ficoco-beta", "0.5"), TINY
    )
    assert c.prune_layers(TINY) == (2, 3) and c.ficoco_beta == 0.5 and c.visual_token_num == 64
    c = config_from_args(
        _args("--method", "ficoco-vl", "--visual-token-num", "64", "--ficoco-llm-start-layer", "1"), TINY
    )
    assert c.vision_for(TINY).final_count(TINY) == 320 and c.llm_for(TINY).input_tokens == 320
    c = config_from_args(_args("--method", "tome", "--tome-r", "16", "--no-tome-prop-attn"), TINY)
    assert c.final_count(TINY) == 576 - 23 * 16 and not c.proportional_attention
    assert c.tome_token_order == "official"
    c = config_from_args(_args("--method", "tome", "--tome-token-order", "raster"), TINY)
    assert c.tome_token_order == "raster"
    with pytest.raises(SystemExit):  # argparse: not a choice
        _args("--method", "tome", "--tome-token-order", "sorted")
    assert "--tome-token-order" in build_parser("t", 8).format_help()
    with pytest.raises(CompressionConfigError, match="does not use --ficoco-vision-start-layer"):
        config_from_args(_args("--method", "ficoco-v", "--ficoco-vision-start-layer", "3"), TINY)


@pytest.mark.slow
def test_loader_runs_ficoco_vl_and_tome_batched_like_single(tiny_hf, image_folder, tmp_path):
    questions = write_vqa_questions(str(tmp_path / "q.jsonl"), 3)

    def run(name, *flags):
        answers = str(tmp_path / f"{name}.jsonl")
        model_vqa_loader.main(
            [
                "--model-path",
                tiny_hf,
                "--question-file",
                questions,
                "--image-folder",
                image_folder,
                "--answers-file",
                answers,
                "--num-workers",
                "0",
                "--max_new_tokens",
                "4",
                *flags,
            ]
        )
        return read_jsonl(answers)

    vl = ["--method", "ficoco-vl", "--visual-token-num", "32", "--ficoco-llm-start-layer", "2"]
    single = run("vl1", *vl)
    batched = run("vl3", *vl, "--batch-size", "3")
    assert [a["text"] for a in batched] == [a["text"] for a in single]
    for a in batched:
        meta = a["metadata"]
        assert meta["method"] == "ficoco-vl" and meta["method_args"]["vision_token_num"] == 304
        assert meta["visual_tokens"] == 304 and sum(meta["vision_merges_per_layer"]) == 576 - 304
        assert meta["visual_tokens_per_layer"] == [304, 304, 168, 32]
        assert meta["ficoco_llm_merges_per_layer"] == [136, 136]
        assert "kept_indices" not in meta
    tome = run("tome", "--method", "tome", "--tome-r", "8", "--batch-size", "2")
    assert [a["metadata"]["visual_tokens"] for a in tome] == [576 - 23 * 8] * 3


def test_applied_config_of_ficoco_vl_is_the_whole_method(tiny_hf):
    import llava.compression as vtc
    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(tiny_hf, device="cpu")
    vtc.apply(model, "ficoco-vl", visual_token_num=64, ficoco_llm_start_layer=2)  # tiny LLM: 4 layers
    assert vtc.applied_config(model).name == "ficoco-vl"
    vtc.apply(model, "fastv", visual_token_num=64)
    assert vtc.applied_config(model).name == "fastv"
    vtc.remove(model)
    assert vtc.applied_config(model).name == "none"
