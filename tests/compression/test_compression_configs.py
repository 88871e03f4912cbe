"""Method configs: every invalid argument raises CompressionConfigError before any model work; CLI flags."""

from __future__ import annotations

import argparse

import pytest

from llava.compression import (
    CompressionConfigError,
    ModelGeometry,
    Stage,
    add_method_arguments,
    available_methods,
    config_from_args,
    get_method,
    make_config,
)

LLAVA = ModelGeometry()  # 576 patches, 24x24, 24 encoder layers, feature layer 22


def test_builtin_methods_are_registered():
    mine = {"fastervlm", "vtc-cls", "prumerge", "prumerge+", "visionzip", "divprune", "random", "pool"}
    assert mine | {"none"} <= set(available_methods())
    for name in mine:
        assert get_method(name).stages == (Stage.PRE_LLM,)
    assert get_method("VTC_CLS").name == "vtc-cls"
    assert get_method("prumerge_plus").name == "prumerge+"
    assert LLAVA.feature_layer == 22


def test_defaults_validate_on_llava_geometry():
    for name in (
        "none",
        "fastervlm",
        "vtc-cls",
        "prumerge",
        "prumerge+",
        "visionzip",
        "divprune",
        "random",
        "pool",
    ):
        make_config(name, LLAVA)
    cfg = make_config("vtc-cls", LLAVA)
    assert (cfg.visual_token_num, cfg.start_layer, cfg.ensemble) == (64, 20, "mean")
    assert cfg.probe_layers(LLAVA) == (20, 21, 22)
    assert make_config("fastervlm", LLAVA).probe_layers(LLAVA) == (22,)
    assert make_config("prumerge", LLAVA).probe_layers(LLAVA) == (23,)
    zip_cfg = make_config("visionzip", LLAVA, visual_token_num=192)
    assert (zip_cfg.dominant, zip_cfg.contextual) == (162, 30)
    assert (
        make_config("visionzip", LLAVA, visual_token_num=128).dominant,
        zip_cfg.to_dict()["contextual"],
    ) == (108, 30)
    assert make_config("visionzip", LLAVA, visual_token_num=64).contextual == 10


INVALID = [
    ("fastervlm", {"visual_token_num": 0}),
    ("fastervlm", {"visual_token_num": -3}),
    ("fastervlm", {"visual_token_num": 577}),
    ("fastervlm", {"visual_token_num": 12.5}),
    ("fastervlm", {"visual_token_num": True}),
    ("fastervlm", {"visual_token_num": "64"}),
    ("fastervlm", {"head_reduction": "median"}),
    ("fastervlm", {"start_layer": 20}),  # not its argument
    ("vtc-cls", {"visual_token_num": 0}),
    ("vtc-cls", {"visual_token_num": 1000}),
    ("vtc-cls", {"start_layer": 23}),  # after the feature layer
    ("vtc-cls", {"start_layer": 24}),
    ("vtc-cls", {"start_layer": -1}),
    ("vtc-cls", {"ensemble": "median"}),
    ("vtc-cls", {"ensemble": "MEAN"}),
    ("prumerge", {"visual_token_num": 1}),  # only the extra token
    ("prumerge", {"visual_token_num": 0}),
    ("prumerge", {"visual_token_num": 577}),
    ("prumerge", {"prumerge_knn": 0}),
    ("prumerge", {"token_order": "random"}),
    ("prumerge", {"prumerge_top_ratio": 0.5}),  # only prumerge+ has it
    ("prumerge+", {"prumerge_top_ratio": 0.0}),
    ("prumerge+", {"prumerge_top_ratio": 1.5}),
    ("prumerge+", {"visual_token_num": 600}),
    ("prumerge+", {"visual_token_num": 64, "prumerge_top_ratio": 0.5}),  # only with the exact-count rule
    ("prumerge+", {"visual_token_num": 64, "prumerge_budget_rule": "exact"}),
    ("prumerge", {"prumerge_budget_rule": "exact-count"}),  # only prumerge+ has it
    ("divprune", {"divprune_precision": "bf16"}),
    ("tome", {"tome_token_order": "sorted"}),
    ("visionzip", {"visual_token_num": 0}),
    ("visionzip", {"visual_token_num": 577}),
    ("visionzip", {"visual_token_num": 64, "contextual_tokens": 64}),  # no room for the [CLS] token
    ("visionzip", {"visual_token_num": 64, "contextual_tokens": -1}),
    ("visionzip", {"visionzip_cls": "yes"}),
    ("divprune", {"visual_token_num": 0}),
    ("divprune", {"visual_token_num": 577}),
    ("divprune", {"divprune_space": "llm"}),
    ("random", {"visual_token_num": 0}),
    ("random", {"visual_token_num": 577}),
    ("random", {"seed": -1}),
    ("pool", {"visual_token_num": 58}),  # 2 x 29 does not fit a 24x24 grid
    ("pool", {"visual_token_num": 0}),
    ("pool", {"visual_token_num": 577}),
    ("none", {"visual_token_num": 64}),
    ("no-such-method", {}),
]


@pytest.mark.parametrize("name,kwargs", INVALID, ids=[f"{n}-{sorted(k.items())}" for n, k in INVALID])
def test_invalid_arguments_raise(name, kwargs):
    with pytest.raises(CompressionConfigError):
        make_config(name, LLAVA, **kwargs)


def test_direct_construction_also_raises():
    from llava.compression.methods.fastervlm import FasterVLMConfig
    from llava.compression.methods.vtc_cls import VTCCLSConfig

    with pytest.raises(CompressionConfigError):
        FasterVLMConfig(visual_token_num=0)
    with pytest.raises(CompressionConfigError):
        VTCCLSConfig(ensemble="median")
    with pytest.raises(CompressionConfigError):
        VTCCLSConfig(start_layer=30).validate(LLAVA)


def test_geometry_dependent_checks():
    small = ModelGeometry(
        num_patches=256, grid=(16, 16), vision_layers=12, llm_layers=4, vision_feature_layer=-1
    )
    assert small.feature_layer == 11
    make_config("fastervlm", small, visual_token_num=256)
    with pytest.raises(CompressionConfigError):
        make_config("fastervlm", small, visual_token_num=257)
    with pytest.raises(CompressionConfigError):  # default start layer 20 does not exist
        make_config("vtc-cls", small)
    make_config("vtc-cls", small, start_layer=9)
    with pytest.raises(CompressionConfigError):  # no encoder layer after the last one
        make_config("prumerge", small)
    with pytest.raises(CompressionConfigError):  # features = encoder input: no attention to score
        make_config("fastervlm", ModelGeometry(vision_feature_layer=0))


def test_cli_flags_roundtrip():
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    args = parser.parse_args(
        ["--method", "vtc-cls", "--visual-token-num", "128", "--start-layer", "21", "--ensemble", "max"]
    )
    cfg = config_from_args(args, LLAVA)
    assert cfg.to_dict() == {
        "visual_token_num": 128,
        "start_layer": 21,
        "ensemble": "max",
        "head_reduction": "mean",
    }
    args = parser.parse_args(["--method", "visionzip", "--visual-token-num", "64", "--no-visionzip-cls"])
    assert config_from_args(args, LLAVA).visionzip_cls is False
    args = parser.parse_args(["--method", "prumerge+"])
    assert config_from_args(args, LLAVA).visual_token_num is None
    args = parser.parse_args(["--method", "fastervlm", "--start-layer", "20"])
    with pytest.raises(CompressionConfigError):  # a flag the method does not take
        config_from_args(args, LLAVA)
    args = parser.parse_args(["--method", "vtc-cls", "--start-layer", "23"])
    with pytest.raises(CompressionConfigError):
        config_from_args(args, LLAVA)
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "vtc-cls", "--ensemble", "median"])


def _budget_fields():
    """(method, field, flag) for every registered method field that is a visual-token budget."""
    import dataclasses

    from llava.compression.registry import BUDGET_FLAGS

    found = []
    for name in available_methods():
        for f in dataclasses.fields(get_method(name).config_cls):
            if f.metadata.get("flag") in BUDGET_FLAGS:
                found.append((name, f.name, f.metadata["flag"]))
    return found


def test_every_budget_flag_rejects_zero_and_negative_budgets():
    fields = _budget_fields()
    names = {name for name, _, _ in fields}
    # the in-LLM methods share --visual-token-num with the pre-LLM ones (FastV accepted 0: "keep nothing")
    assert {"fastv", "dart", "pdrop", "sparsevlm", "fastervlm", "visionzip"} <= names
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    for name, field_name, flag in fields:
        for bad in (0, -1):
            with pytest.raises(CompressionConfigError, match=r"must be >= 1"):
                make_config(name, LLAVA, **{field_name: bad})
            args = parser.parse_args(["--method", name, flag, str(bad)])
            with pytest.raises(CompressionConfigError, match=r"must be >= 1"):
                config_from_args(args, LLAVA)


def test_in_llm_budget_zero_is_refused_on_direct_construction_too():
    from llava.compression.methods.dart import DARTConfig
    from llava.compression.methods.fastv import FastVConfig

    for cls in (FastVConfig, DARTConfig):
        with pytest.raises(CompressionConfigError):
            cls(visual_token_num=0)


# -- configs hold their arguments only; one file per method ----------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in available_methods() if n != "none"])
def test_configs_hold_their_fields_only_before_and_after_validate(name):
    """No cached private state: what a config derives from a geometry is computed from it when needed."""
    import dataclasses

    config = make_config(name, None)
    fields = {f.name for f in dataclasses.fields(config)}
    assert set(vars(config)) == fields
    before = dict(vars(config))
    config.validate(LLAVA)
    assert vars(config) == before


def test_no_method_module_imports_another():
    import ast
    import pathlib

    import llava.compression.methods as methods

    folder = pathlib.Path(methods.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module.rsplit(".", 1)[-1]} | {a.name for a in node.names}
                if node.module.startswith("llava.compression.methods") or node.module == "llava.compression":
                    assert not (imported & modules), f"{path.name} imports {node.module} {sorted(imported)}"


def test_ficoco_vl_stage_configs_carry_its_values():
    """FiCoCo-VL composes FiCoCo-V and FiCoCo-L: every option they share is declared once and carried over."""
    import dataclasses

    from llava.compression.methods.ficoco import FiCoCoVLConfig

    vl = FiCoCoVLConfig(
        visual_token_num=40, ficoco_lambda=0.2, ficoco_beta=0.3, ficoco_gamma=0.7, ficoco_quantile=0.9,
        ficoco_local_penalty=False, ficoco_redundancy="sent", ficoco_size_weighted=True, llm_positions="compact",
        ficoco_vision_start_layer=5, ficoco_llm_start_layer=3,
    )
    vision, llm = vl.vision_for(LLAVA), vl.llm_for(LLAVA)
    own = {f.name: f for f in dataclasses.fields(FiCoCoVLConfig)}
    for stage_config in (vision, llm):
        for f in dataclasses.fields(stage_config):
            if f.name in own and f.name not in ("visual_token_num", "ficoco_start_layer"):
                assert getattr(stage_config, f.name) == getattr(vl, f.name), f.name
                assert own[f.name].metadata == f.metadata and own[f.name].default == f.default, f.name
    assert (vision.ficoco_start_layer, llm.ficoco_start_layer) == (5, 3)
    assert llm.input_tokens == vision.final_count(LLAVA) == (576 + 40 + 1) // 2
    assert vl.token_schedule(LLAVA) == llm.token_schedule(LLAVA)
    assert vl.encoder_token_schedule(LLAVA) == vision.encoder_token_schedule(LLAVA)


def test_every_method_config_is_frozen():
    """A config is a value: validated once, never changed afterwards (no cached or mutated fields)."""
    import dataclasses

    for name in available_methods():
        spec = get_method(name)
        assert spec.config_cls.__dataclass_params__.frozen, name
        config = make_config(name) if name == "none" else spec.config_cls()
        for f in dataclasses.fields(config)[:1]:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(config, f.name, getattr(config, f.name))
