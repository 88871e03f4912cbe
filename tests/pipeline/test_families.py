"""The model-family registry: dispatch, the [CLS] requirement, entry-point families and the families CLI."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

import llava.compression as vtc
from llava.compression import families
from llava.compression.families import ENTRY_POINT_GROUP, Family, NoFamilyError, family_for, register_family
from llava.compression.families.__main__ import family_table, main
from llava.compression.pre_llm import VisionSignals
from llava.compression.registry import CompressionConfigError, ModelGeometry, Stage, get_method, make_config

ROOT = Path(__file__).resolve().parents[2]
FAKE_MODULE = "vtc_test_fake_family"


class NoClsModel:
    """Stands for a model whose vision encoder has no [CLS] token (as Qwen2.5-VL's)."""


class NoClsFamily(Family):
    """A test-only family: pre-LLM stage, a 6x6 grid, no [CLS] token."""

    name = "test-no-cls"
    stages = (Stage.PRE_LLM,)
    provides = frozenset()

    def supports(self, model):
        return isinstance(model, NoClsModel)

    def geometry(self, model):
        return ModelGeometry(num_patches=36, grid=(6, 6), vision_layers=2, llm_layers=2, has_cls=False,
                             family=self.name)

    def apply(self, model, method, **options):
        model.config = self.build_config(model, method, **options)
        return model


@pytest.fixture
def registry(monkeypatch):
    """The family registry as it is, restored after the test (registrations made in it vanish)."""
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))
    return families._FAMILIES


@pytest.fixture
def fake_entry_point(monkeypatch, registry):
    """``NoClsFamily`` declared only through the entry-point group (its module is imported by the registry)."""
    module = types.ModuleType(FAKE_MODULE)
    module.FAMILY = NoClsFamily()
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    point = importlib.metadata.EntryPoint(name="test-no-cls", value=f"{FAKE_MODULE}:FAMILY", group=ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [point] if kw.get("group") == ENTRY_POINT_GROUP else real(**kw))
    return module.FAMILY


def test_llava_dispatches_to_its_registered_family(tiny_hf, registry):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_hf).eval()
    family = family_for(model)
    assert family.name == "llava-1.5" and "llava-1.5" in families.available_families()
    geometry = vtc.model_geometry(model)
    assert geometry.has_cls and geometry.family == "llava-1.5" and geometry.grid == (24, 24)
    pixels = torch.zeros(3, 3, 336, 336)
    assert family.unit_geometries(model, pixel_values=pixels) == [geometry] * 3
    assert family.language_model(model) is model.model.language_model
    assert family.visual_token_id(model) == model.config.image_token_id
    signals, _ = family.collect_vision_signals(model, pixels[:1], (geometry.feature_layer,))
    assert signals.has_cls and signals.num_patches == 576 and signals.patches.shape[1] == 576
    # the contract's position hook is the decoder's own rotary embedding (1-D positions for LLaVA)
    hidden = torch.zeros(1, 5, model.config.text_config.hidden_size)
    positions = torch.arange(5)[None]
    cos, sin = family.position_embeddings(model, hidden, positions)
    ref_cos, ref_sin = model.model.language_model.rotary_emb(hidden, position_ids=positions)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    with pytest.raises(NoFamilyError, match="no compression family for object"):
        vtc.apply(object(), "fastervlm")
    assert vtc.apply(object(), "none") is not None  # nothing to remove on an unknown model


def test_cls_method_is_refused_on_a_family_without_cls(fake_entry_point):
    model = NoClsModel()
    with pytest.raises(CompressionConfigError) as err:
        vtc.apply(model, "fastervlm", visual_token_num=8)
    message = str(err.value)
    assert "'fastervlm'" in message and "'test-no-cls'" in message and "[CLS]" in message
    assert "\n" not in message
    # a method without the requirement runs, validated against the family's own geometry
    vtc.apply(model, "random", visual_token_num=8)
    assert model.config.name == "random" and model.config.visual_token_num == 8
    with pytest.raises(CompressionConfigError, match="between 1 and 36"):
        vtc.apply(model, "random", visual_token_num=37)
    # the registry's check alone, as an entry point builds a config from a checkpoint's geometry
    geometry = fake_entry_point.geometry(model)
    for method in ("fastervlm", "vtc-cls", "prumerge", "prumerge+", "visionzip"):
        assert get_method(method).requires == {"cls"}
        with pytest.raises(CompressionConfigError, match=f"'{re.escape(method)}' needs a \\[CLS\\] token.*'test-no-cls'"):
            make_config(method, geometry)
    assert make_config("divprune", geometry, visual_token_num=4).visual_token_num == 4


def test_vision_signals_without_cls():
    tokens = torch.randn(2, 36, 8)
    signals = VisionSignals(tokens=tokens, grid=(6, 6), feature_layer=0, num_layers=1, num_heads=2, has_cls=False)
    assert signals.num_patches == 36 and torch.equal(signals.patches, tokens)
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        signals.cls_attention(0)
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        _ = signals.cls_tokens


def test_entry_point_family_is_loaded_when_no_registered_family_supports_the_model(registry, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    with pytest.raises(NoFamilyError, match="NoClsModel"):
        family_for(NoClsModel())
    assert "test-no-cls" not in registry


def test_entry_point_family_found(fake_entry_point, registry):
    assert "test-no-cls" not in registry  # declared, not imported yet
    assert family_for(NoClsModel()) is fake_entry_point
    assert "test-no-cls" in families.available_families()


def test_register_family_checks_its_argument(registry):
    with pytest.raises(TypeError, match="named Family instance"):
        register_family(object())


def test_families_cli_lists_families_and_applicable_methods(fake_entry_point, capsys):
    import videollava.model.family

    # importing videollava.model registers Video-LLaVA; an earlier test may have imported it into a registry that
    # was restored since, so register it again (the registry fixture restores this one too)
    register_family(videollava.model.family.FAMILY)

    assert main(["--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"llava-1.5", "video-llava", "test-no-cls"}
    llava = rows["llava-1.5"]
    assert {"fastervlm", "tome", "ficoco-vl", "fastv"} <= set(llava["methods"]) and not llava["refused"]
    video = rows["video-llava"]
    assert {"fastervlm", "fastv", "random"} <= set(video["methods"])
    assert set(video["refused"]) == {"tome", "ficoco-v", "ficoco-vl"}
    assert "only pre-LLM methods" in video["refused"]["tome"]
    no_cls = rows["test-no-cls"]
    assert set(no_cls["refused"]) >= {"fastervlm", "vtc-cls", "prumerge", "prumerge+", "visionzip", "fastv", "tome"}
    assert "[CLS]" in no_cls["refused"]["fastervlm"] and "stage" in no_cls["refused"]["fastv"]
    assert {"random", "pool", "divprune"} <= set(no_cls["methods"])
    assert family_table() == list(rows.values())
    assert main([]) == 0
    text = capsys.readouterr().out
    assert "llava-1.5: stages vision_encoder, pre_llm, llm; provides cls" in text
    assert "  not fastervlm: method 'fastervlm' needs a [CLS] token" in text


def test_families_cli_runs_as_a_module():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "llava.compression.families"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("llava-1.5: ") and "  methods: dart, divprune, fastervlm" in done.stdout


def test_llava_never_imports_videollava():
    offenders = []
    for path in (ROOT / "llava").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "videollava"]
    assert not offenders


def test_pyproject_declares_the_video_family_entry_point():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    point = importlib.metadata.EntryPoint(name="video-llava", value=declared["video-llava"], group=ENTRY_POINT_GROUP)
    family = point.load()
    assert isinstance(family, Family) and family.name == "video-llava"
