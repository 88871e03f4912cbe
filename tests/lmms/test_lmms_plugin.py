"""The lmms-eval model classes in process: ``--model_args`` as the ``--method`` CLI reads them, one-line errors before
any model work, batched generation with stop strings, and loglikelihood against a plain forward of the model."""

from __future__ import annotations

import argparse
import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is installed by `make install` (requirements-lmms.txt)")

from lmms_eval.api.instance import GenerationResult, Instance  # noqa: E402

from llava.compression.registry import add_method_arguments, config_from_args  # noqa: E402
from llava.eval.inference import GenerationSettings  # noqa: E402
from llava.eval.lmms_plugin.base import ModelArgsExit, generation_settings, stop_at  # noqa: E402
from llava.eval.lmms_plugin.llava_model import VTCLlava  # noqa: E402
from llava.mm_utils import tokenizer_image_token  # noqa: E402
from llava.model.builder import read_model_geometry  # noqa: E402
from llava.model.tiny import write_hf_layout  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_tasks():
    """The test tasks' functions (``fixtures/utils.py``), as lmms-eval's ``!function utils.x`` loads them."""
    spec = importlib.util.spec_from_file_location("vtc_lmms_fixture_utils", FIXTURES / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TASKS = fixture_tasks()
DOCS = [{"question_id": i, "question": q, "width": w, "height": h, "rgb": rgb} for i, (q, w, h, rgb) in enumerate([
    ("Is there a red circle in the image?", 64, 48, [0, 120, 200]),
    ("What colour is the circle?", 40, 70, [80, 120, 140]),
    ("Is there a dog in the image?", 30, 30, [160, 120, 80]),
    ("Describe the image.", 72, 40, [200, 120, 50]),
])]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return write_hf_layout(str(tmp_path_factory.mktemp("lmms") / "tiny-llava"), seed=0)


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(self, args, device):
        raise AssertionError("the model was loaded despite bad --model_args")

    monkeypatch.setattr(VTCLlava, "load", refuse)


def build(checkpoint: str, **model_args) -> VTCLlava:
    return VTCLlava(pretrained=checkpoint, device="cpu", **model_args)


def generate_request(doc_id: int, gen_kwargs: dict) -> Instance:
    return Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1},
                    arguments=(TASKS.pope_doc_to_text(DOCS[doc_id]), dict(gen_kwargs), TASKS.doc_to_visual, doc_id,
                               "t", "test"))


def loglikelihood_request(doc_id: int, continuation: str) -> Instance:
    return Instance(request_type="loglikelihood", idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1},
                    arguments=(DOCS[doc_id]["question"], continuation, TASKS.doc_to_visual, doc_id, "t", "test"))


# -- --model_args -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_args, expected", [
    ({"method": "nosuch"}, "unknown compression method 'nosuch'"),
    ({"method": "fastervlm", "visual_token_num": "many"}, "--visual-token-num: invalid int value: 'many'"),
    ({"method": "fastervlm", "visual_token_num": 0}, "--visual-token-num must be >= 1"),
    ({"method": "fastervlm", "visual_token_num": 64, "fastv_k": 3}, "'fastervlm' does not use --fastv-k"),
    ({"method": "fastv", "visual_token_num": 64, "visual_tokens": 3}, "unknown --model_args key(s) ['visual_tokens']"),
    ({"method": "fastervlm", "visual_token_num": 64, "next_grid": "fixed-672"}, "applies to LLaVA-NeXT checkpoints"),
    ({"method": "fastervlm", "batch_size": "auto"}, "--batch_size must be an integer >= 1"),
    ({"method": "none", "max_pixels": 3136}, "apply to Qwen2.5-VL checkpoints only"),
    ({"method": "none", "conv_template": "nosuch"}, "nosuch"),
])
def test_bad_model_args_are_one_line_before_any_model_work(checkpoint, no_loading, capsys, model_args, expected):
    with pytest.raises(ModelArgsExit) as stop:
        build(checkpoint, **model_args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err


def test_a_missing_checkpoint_is_one_line(tmp_path, no_loading, capsys):
    with pytest.raises(ModelArgsExit):
        VTCLlava(pretrained=str(tmp_path / "nowhere"), method="fastervlm", visual_token_num=64)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "nowhere" in err


@pytest.mark.parametrize("model_args, cli", [
    ({"method": "fastervlm", "visual_token_num": 64}, ["--method", "fastervlm", "--visual-token-num", "64"]),
    ({"method": "pdrop", "pdrop_layers": "[1,2,3]", "pdrop_lambda": 0.5},
     ["--method", "pdrop", "--pdrop-layers", "1,2,3", "--pdrop-lambda", "0.5"]),
    ({"method": "random", "visual_token_num": 32, "seed": 7}, ["--method", "random", "--visual-token-num", "32",
                                                               "--seed", "7"]),
    ({"method": "fastv", "visual_token_num": 100, "fastv_k": 2}, ["--method", "fastv", "--visual-token-num", "100",
                                                                  "--fastv-k", "2"]),
])
def test_model_args_build_the_config_the_method_cli_builds(checkpoint, no_loading, model_args, cli):
    model = object.__new__(VTCLlava)  # validation only: no __init__, no loading
    from llava.eval.lmms_plugin.model_args import build_parser, parse_model_args

    args = parse_model_args(build_parser(VTCLlava._all_model_arguments), {"pretrained": checkpoint, **model_args})
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    expected = config_from_args(parser.parse_args(cli), read_model_geometry(checkpoint))
    assert model.validate(args) == expected


def test_generation_kwargs_map_to_the_generation_settings():
    settings, until = generation_settings({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                           "do_sample": False, "until": "\n\n"}, 1024)
    assert settings == GenerationSettings(max_new_tokens=16, temperature=0.0, top_p=None, num_beams=1)
    assert until == ["\n\n"]
    settings, until = generation_settings({"temperature": 0.2, "top_p": 0.9}, 1024)
    assert settings == GenerationSettings(max_new_tokens=1024, temperature=0.2, top_p=0.9) and until == []
    assert generation_settings({"temperature": 0.7, "do_sample": False}, 8)[0].temperature == 0.0
    assert stop_at("Yes.\n\nThe image shows", ["\n\n", "</s>"]) == "Yes." and stop_at("No", ["", "x"]) == "No"


def test_pyproject_registers_both_models_through_lmms_eval_entry_points():
    from importlib.metadata import EntryPoint

    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    registry = ModelRegistryV2()
    for name, value in declared.items():
        for manifest in registry._coerce_payload_to_manifests(EntryPoint(name, value, "lmms_eval.models").load()):
            registry.register_manifest(manifest)
    assert registry.list_canonical_model_ids() == ["vtc_llava", "vtc_videollava"]
    for model_id in registry.list_canonical_model_ids():
        cls = registry.get_model_class(model_id)
        assert issubclass(cls, lmms) and cls.is_simple and cls.model_name == model_id


# -- generation and likelihood on the tiny checkpoint ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fastervlm(checkpoint) -> VTCLlava:
    model = build(checkpoint, method="fastervlm", visual_token_num=16, batch_size=3)
    model.task_dict = {"t": {"test": DOCS}}
    return model


def test_batched_generation_equals_one_request_at_a_time_and_stops_at_until(fastervlm):
    gen_kwargs = {"max_new_tokens": 6, "temperature": 0}
    batched = fastervlm.generate_until([generate_request(i, gen_kwargs) for i in range(len(DOCS))])
    assert all(isinstance(r, GenerationResult) for r in batched)
    fastervlm.batch_size_per_call = 1
    try:
        single = fastervlm.generate_until([generate_request(i, gen_kwargs) for i in range(len(DOCS))])
    finally:
        fastervlm.batch_size_per_call = 3
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.token_counts.to_dict()["visual_tokens"] == 16 for r in batched)
    text = next(r.text for r in batched if len(r.text) >= 4)
    stop = text[2:4]
    doc = [r.text for r in batched].index(text)
    (cut,) = fastervlm.generate_until([generate_request(doc, dict(gen_kwargs, until=[stop]))])
    assert cut.text == text.split(stop)[0] and len(cut.text) < len(text)


def test_loglikelihood_equals_a_forward_of_the_unmodified_model(checkpoint):
    model = build(checkpoint, method="none")
    model.task_dict = {"t": {"test": DOCS}}
    results = model.loglikelihood([loglikelihood_request(1, " red"), loglikelihood_request(1, " green circle")])
    for result, continuation in zip(results, [" red", " green circle"]):
        mean_nll, is_greedy = result.text
        image = TASKS.doc_to_visual(DOCS[1])[0]
        pixels = model.image_processor(images=image, return_tensors="pt")["pixel_values"]
        prompt = model.generator.build_prompt("<image>\n" + DOCS[1]["question"])
        image_id = model.model.config.image_token_id
        context = tokenizer_image_token(prompt, model.tokenizer, image_id, 576)
        full = tokenizer_image_token(prompt + continuation, model.tokenizer, image_id, 576)
        assert full[: len(context)] == context
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor([full]), pixel_values=pixels).logits[0].float()
        targets = torch.tensor(full[len(context):])
        log_probs = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
        assert mean_nll == pytest.approx(-log_probs.gather(1, targets[:, None]).mean().item(), abs=1e-5)
        assert isinstance(is_greedy, bool)
        assert result.token_counts.to_dict() == {"input_tokens": len(full), "visual_tokens": 576}


def test_loglikelihood_under_an_in_llm_method_logs_the_per_layer_counts(checkpoint):
    model = build(checkpoint, method="fastv", visual_token_num=100, fastv_k=2)
    model.task_dict = {"t": {"test": DOCS}}
    (result,) = model.loglikelihood([loglikelihood_request(0, " yes")])
    counts = result.token_counts.to_dict()
    assert counts["visual_tokens"] == 576 and counts["visual_tokens_per_layer"] == [576, 576, 100, 100]
    (answer,) = model.generate_until([generate_request(0, {"max_new_tokens": 3})])
    assert answer.token_counts.to_dict()["visual_tokens_per_layer"] == [576, 576, 100, 100]


# -- Qwen2.5-VL through vtc_llava ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory) -> str:
    from llava.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("lmms") / "tiny-qwen2.5-vl"), family="qwen2.5-vl")


def test_qwen_checkpoint_batches_like_single_requests_and_refuses_cls_methods(qwen_checkpoint, capsys):
    """vtc_llava on a Qwen2.5-VL checkpoint: DivPrune keeps at most T merged tokens per image, a batch of requests
    answers as one request at a time, and a [CLS] method stops with one line before loading."""
    model = build(qwen_checkpoint, method="divprune", visual_token_num=4, batch_size=3)
    model.task_dict = {"t": {"test": DOCS}}
    gen_kwargs = {"max_new_tokens": 4, "temperature": 0}
    batched = model.generate_until([generate_request(i, gen_kwargs) for i in range(len(DOCS))])
    model.batch_size_per_call = 1
    single = model.generate_until([generate_request(i, gen_kwargs) for i in range(len(DOCS))])
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(0 < r.token_counts.to_dict()["visual_tokens"] <= 4 for r in batched)
    with pytest.raises(SystemExit) as exc:
        build(qwen_checkpoint, method="fastervlm", visual_token_num=4)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "fastervlm" in err and "cls" in err.lower()
