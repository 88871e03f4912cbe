"""The lmms-eval plugin through lmms-eval's own CLI, offline, on the tiny checkpoint.

Local tasks (``fixtures/``: a POPE-style yes/no task scored as LLaVA's ``eval_pope`` and a multiple-choice task,
over JSON-lines files; ``dataset_path: json`` + ``dataset_kwargs.data_files``, run from that folder) are evaluated by
``python -m lmms_eval`` (four runs in one process, :mod:`tests.lmms.run_lmms_cli`, which also fails if torchvision
was imported): a method with 8 visual tokens, no method, the method keeping all 576 tokens, and a budget of 0 (one
error line, status 2).

The model is found through the ``lmms_eval.models`` entry points of ``pyproject.toml``: from the installed
distribution once the project is (re)installed, else from a temporary ``*.dist-info`` declaring the same entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is installed by `make install` (requirements-lmms.txt)")

from llava.eval.benchmarks.pope import score_pope  # noqa: E402
from llava.model.tiny import write_hf_layout  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENTRY_POINT_GROUP = "lmms_eval.models"
SMALL_BUDGET, ALL_TOKENS = 8, 576  # the tiny checkpoint's 24 x 24 grid
BAD_METHOD = "method=fastervlm,visual_token_num=0"


def declared_entry_points() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]


def entry_point_path(tmp: Path) -> list[str]:
    """``[]`` when the installed project declares the plugin's entry points, else a folder holding a dist-info that
    declares them (read from pyproject.toml), for PYTHONPATH."""
    import importlib.metadata

    installed = {e.name: e.value for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    declared = declared_entry_points()
    if all(installed.get(name) == value for name, value in declared.items()):
        return []
    info = tmp / "entry_points" / "vtc_lmms_plugin_test-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vtc-lmms-plugin-test\nVersion: 0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {value}" for name, value in declared.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return [str(info.parent)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Run:
    """One lmms-eval run's results and logged samples."""

    def __init__(self, out: Path):
        (results,) = out.glob("*/*_results.json")
        self.results = json.loads(results.read_text())["results"]
        self.samples = {task: sorted(read_jsonl(next(out.glob(f"*/*_samples_{task}.jsonl"))), key=lambda s: s["doc_id"])
                        for task in self.results}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmms")
    checkpoint = write_hf_layout(str(tmp / "tiny-llava"), seed=0)
    common = ["--model", "vtc_llava", "--include_path", str(FIXTURES), "--log_samples", "--verbosity", "WARNING"]
    runs = {
        "budget": (f"method=fastervlm,visual_token_num={SMALL_BUDGET}", "2"),
        "none": ("method=none", "3"),
        "keep_all": (f"method=fastervlm,visual_token_num={ALL_TOKENS}", "3"),
    }
    argvs = [{"argv": common + ["--model_args", f"pretrained={checkpoint},{method}", "--tasks",
                                "vtc_pope_mini,vtc_mc_mini", "--batch_size", batch, "--output_path", str(tmp / name)]}
             for name, (method, batch) in runs.items()]
    argvs.append({"argv": common + ["--model_args", f"pretrained={checkpoint},{BAD_METHOD}", "--tasks", "vtc_pope_mini",
                                    "--output_path", str(tmp / "bad")], "exit": 2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *entry_point_path(tmp)]),
           "HF_HOME": str(tmp / "hf"), "HF_DATASETS_CACHE": str(tmp / "hf" / "datasets"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("run_lmms_cli.py")), json.dumps(argvs)],
                          cwd=FIXTURES, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    missing = [name for name in runs if not list((tmp / name).glob("*/*_results.json"))]
    assert not missing, f"no results for {missing}: {done.stdout[-3000:]} {done.stderr[-3000:]}"
    return done, {name: Run(tmp / name) for name in runs}


def test_the_cli_runs_offline_without_torchvision(cli):
    done, _ = cli
    assert "torchvision not imported" in done.stdout


def test_a_bad_method_stops_the_cli_with_one_line_and_status_2(cli):
    done, _ = cli
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: method 'fastervlm': --visual-token-num must be >= 1")
    assert "Traceback" not in done.stderr


def test_pope_score_reported_by_lmms_eval_equals_our_scorer(cli):
    _, runs = cli
    docs = read_jsonl(FIXTURES / "pope_mini.jsonl")
    samples = runs["budget"].samples["vtc_pope_mini"]
    assert [s["doc_id"] for s in samples] == list(range(len(docs)))
    answers = [{"question_id": docs[s["doc_id"]]["question_id"], "text": s["filtered_resps"]} for s in samples]
    labels: dict[str, list[str]] = {}
    for doc in docs:
        labels.setdefault(doc["category"], []).append(doc["answer"])
    ours = score_pope(answers, docs, labels)
    reported = runs["budget"].results["vtc_pope_mini"]
    assert reported["pope_accuracy,none"] == pytest.approx(ours["mean_accuracy"], abs=1e-9)
    assert reported["pope_f1,none"] == pytest.approx(ours["mean_f1"], abs=1e-9)


def _choice_losses(sample: dict) -> list[float]:
    return [float(value[0]) for value in sample["filtered_resps"]]


def test_multiple_choice_accuracy_is_the_argmin_of_the_logged_losses(cli):
    _, runs = cli
    docs = read_jsonl(FIXTURES / "mc_mini.jsonl")
    samples = runs["budget"].samples["vtc_mc_mini"]
    correct = []
    for sample in samples:
        losses = _choice_losses(sample)
        assert len(losses) == len(docs[sample["doc_id"]]["choices"]) and all(loss > 0 for loss in losses)
        correct.append(float(losses.index(min(losses)) == docs[sample["doc_id"]]["answer"]))
    assert runs["budget"].results["vtc_mc_mini"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_each_response_logs_its_visual_token_count(cli):
    _, runs = cli
    for name, expected in (("budget", SMALL_BUDGET), ("none", ALL_TOKENS), ("keep_all", ALL_TOKENS)):
        for task, samples in runs[name].samples.items():
            counts = [c["visual_tokens"] for s in samples for c in s["token_counts"]]
            assert counts and set(counts) == {expected}, (name, task, counts)


def test_keeping_every_token_answers_as_no_method(cli):
    _, runs = cli
    none, keep_all = runs["none"].samples, runs["keep_all"].samples
    assert [s["filtered_resps"] for s in keep_all["vtc_pope_mini"]] == [s["filtered_resps"] for s in none["vtc_pope_mini"]]
    assert [_choice_losses(s) for s in keep_all["vtc_mc_mini"]] == [_choice_losses(s) for s in none["vtc_mc_mini"]]
    assert runs["keep_all"].results == runs["none"].results
