"""The per-method per-benchmark scripts, GPU sharding, data-parallel launch and merging, on the tiny model."""

import json
import os
import subprocess
import sys

import pytest

from llava.data.mini import generate
from llava.eval.make_scripts import expected_scripts
from llava.eval.make_scripts import main as make_scripts_main
from tests.conftest import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("eval"))
    generate(root)
    return root


def _script(rel: str, *args: str, env_extra: dict, check: bool = True, version: str = "v1_5"
            ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", version, "eval", rel), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _strip(answers: list[dict]) -> list[tuple]:
    return [(a["question_id"], a.get("round_id"), a["text"], json.dumps(a["metadata"], sort_keys=True)) for a in answers]


@pytest.mark.parametrize("version", ["v1_5", "v1_6"])
def test_scripts_are_generated_from_the_registries(version):
    assert make_scripts_main(["--check", "--version", version]) == 0
    scripts = expected_scripts(version)
    assert "VTC-CLS/sqa.sh" in scripts and "baseline/pope.sh" in scripts and "FasterVLM/mme.sh" in scripts
    for rel in scripts:
        assert os.access(os.path.join(ROOT, "scripts", version, "eval", rel), os.X_OK)
        assert f"scripts/{version}/eval/" in scripts[rel]


def test_v1_6_script_runs_the_tiny_next_checkpoint_end_to_end(tiny_next_hf, data_root):
    env = {"MODEL_PATH": tiny_next_hf, "DATA_ROOT": data_root, "CUDA_VISIBLE_DEVICES": "", "BATCH_SIZE": "3"}
    proc = _script("baseline/pope.sh", "--", "--max_new_tokens", "4", env_extra=env, version="v1_6")
    label = "none_max-new-tokens-4"
    answers = read_jsonl(os.path.join(data_root, "pope", "answers", "tiny-llava-next-hf", label, "full.jsonl"))
    assert answers and all(a["metadata"]["run"]["next_grid"] == "anyres" for a in answers)
    assert all(a["metadata"]["visual_tokens"] > 0 for a in answers)
    results_dir = os.path.join(data_root, "pope", "results", "tiny-llava-next-hf", label)
    assert len(os.listdir(results_dir)) == 1 and "merged" in proc.stdout


def test_v1_6_scripts_default_to_the_llava_16_checkpoint(data_root):
    env = {k: v for k, v in os.environ.items() if k not in ("CKPT", "MODEL_PATH")}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "v1_6", "eval", "baseline", "pope.sh")],
                          env=dict(env, PYTHON=sys.executable, DATA_ROOT=data_root), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "checkpoints/llava-v1.6-vicuna-7b not found" in proc.stderr


@pytest.mark.parametrize("rel, args, bench_dir, label, budget", [
    ("VTC-CLS/sqa.sh", ["64"], "scienceqa", "vtc-cls", "64"),
    ("VTC-CLS/pope.sh", ["64", "22"], "pope", "vtc-cls_start-layer-22", "64"),
    ("FasterVLM/mme.sh", ["32"], "MME", "fastervlm", "32"),
    ("baseline/textvqa.sh", [], "textvqa", "none", "full"),
    ("PruMerge+/mmbench.sh", ["64"], "mmbench", "prumerge+", "64"),
])
def test_representative_scripts_run_end_to_end(tiny_hf, data_root, rel, args, bench_dir, label, budget):
    proc = _script(rel, *args, env_extra={"MODEL_PATH": tiny_hf, "DATA_ROOT": data_root, "CUDA_VISIBLE_DEVICES": "",
                                          "BATCH_SIZE": "2"})
    answers = read_jsonl(os.path.join(data_root, bench_dir, "answers", "tiny-llava-hf", label, f"{budget}.jsonl"))
    assert answers and all(a["metadata"]["method"] == label.split("_")[0] for a in answers)
    results_dir = os.path.join(data_root, bench_dir, "results", "tiny-llava-hf", label)
    (results_file,) = os.listdir(results_dir)
    record = json.load(open(os.path.join(results_dir, results_file)))
    assert record["num_answers"] == len(answers) and record["method"] == label
    assert "merged" in proc.stdout


def test_three_gpu_chunks_merge_to_the_unchunked_file(tiny_hf, data_root, tmp_path):
    one = dict(MODEL_PATH=tiny_hf, DATA_ROOT=data_root, CUDA_VISIBLE_DEVICES="")
    _script("FasterVLM/pope.sh", "64", env_extra=one)
    merged_one = read_jsonl(os.path.join(data_root, "pope", "answers", "tiny-llava-hf", "fastervlm", "64.jsonl"))
    # three "GPUs" (on a CPU machine each worker falls back to the CPU): three chunk processes
    three_root = str(tmp_path / "eval3")
    generate(three_root, ["pope"])
    proc = _script("FasterVLM/pope.sh", "64", env_extra=dict(one, DATA_ROOT=three_root, CUDA_VISIBLE_DEVICES="0,1,2"))
    assert "3 chunk(s)" in proc.stdout
    chunk_dir = os.path.join(three_root, "pope", "answers", "tiny-llava-hf", "fastervlm", "64_chunks")
    assert sorted(f for f in os.listdir(chunk_dir) if not f.endswith(".lock")) == ["3_0.jsonl", "3_1.jsonl", "3_2.jsonl"]
    merged_three = read_jsonl(os.path.join(three_root, "pope", "answers", "tiny-llava-hf", "fastervlm", "64.jsonl"))
    assert _strip(merged_three) == _strip(merged_one)


def test_data_parallel_launch_ranks_merge_in_order(tiny_hf, data_root, tmp_path, vqa_questions, image_folder):
    """What `accelerate launch --num_processes 2 -m llava.eval.model_vqa_loader ...` does, without accelerate."""
    answers = str(tmp_path / "dp.jsonl")
    cmd = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", tiny_hf, "--question-file",
           vqa_questions, "--image-folder", image_folder, "--answers-file", answers, "--num-workers", "0",
           "--max_new_tokens", "8"]
    procs = [subprocess.Popen(cmd, env=dict(os.environ, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert "rank 0 merged 6 answers from 2 ranks" in outs[0][0]
    single = str(tmp_path / "single.jsonl")
    subprocess.run(cmd[:-6] + ["--answers-file", single] + cmd[-4:], check=True, capture_output=True)
    assert _strip(read_jsonl(answers)) == _strip(read_jsonl(single))


@pytest.mark.parametrize("rel, args, message", [
    ("FasterVLM/pope.sh", [], "needs a visual-token budget"),
    ("FasterVLM/pope.sh", ["64", "3"], "fastervlm has no main method argument"),
    ("baseline/pope.sh", ["64", "1"], "the baseline takes no method argument"),
    ("run.sh", ["fastervlm", "nosuchbench", "64"], "unknown benchmark"),
    ("run.sh", ["nosuchmethod", "pope", "64"], "unknown compression method"),
])
def test_script_errors_are_one_line(tiny_hf, data_root, rel, args, message):
    proc = _script(rel, *args, env_extra={"MODEL_PATH": tiny_hf, "DATA_ROOT": data_root}, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_folder(data_root):
    proc = _script("baseline/pope.sh", env_extra={"CKPT": "no-such-ckpt", "DATA_ROOT": data_root}, check=False)
    assert proc.returncode == 2 and "checkpoints/no-such-ckpt not found" in proc.stderr


def test_every_main_knob_is_a_flag_of_its_method():
    from llava.compression.registry import available_methods, get_method
    from llava.eval.run_benchmark import MAIN_KNOB

    for method, flag in MAIN_KNOB.items():
        assert method in available_methods(), method
        flags = {f.metadata.get("flag") for f in get_method(method).config_cls.__dataclass_fields__.values()}
        assert flag in flags, (method, flag)


def test_answers_label_names_every_setting_given():
    from llava.eval.run_benchmark import answers_label, method_flags
    from llava.eval.run_label import settings_label

    assert method_flags("fastv", "64", None) == ("fastv", ["--method", "fastv", "--visual-token-num", "64"], [])
    assert answers_label("fastv", [], "vicuna_v1", []) == "fastv"  # the default run's path is unchanged
    assert answers_label("none", [], "vicuna_v1", []) == "none"
    _, _, knob = method_flags("fastv", "64", "3")
    positional = answers_label("fastv", knob, "vicuna_v1", [])
    assert positional == "fastv_fastv-k-3" == answers_label("fastv", [], "vicuna_v1", ["--fastv-k", "3"])
    assert answers_label("fastv", knob, "vicuna_v1", ["--fastv-k", "1"]) == "fastv_fastv-k-1"  # the last one counts
    assert answers_label("fastv", knob, "llava_v1", ["--temperature=0.2", "--num-workers", "0", "--skip-bad-inputs",
                                                     "--max_new_tokens", "8"]) == (
        "fastv_conv-mode-llava_v1_fastv-k-3_max-new-tokens-8_temperature-0.2")
    assert settings_label("fastervlm", ["--budget-mode", "global", "--keep-cls"]) == (
        "fastervlm_budget-mode-global_keep-cls")
    odd = settings_label("none", ["--vision-tower", "/ckpts/clip vit"])
    assert odd.startswith("none_vision-tower-ckpts-clip-vit-") and "/" not in odd
    assert odd != settings_label("none", ["--vision-tower", "/ckpts/clip/vit"])


def test_settings_after_the_double_dash_get_their_own_answers(tiny_hf, tmp_path):
    """`pope.sh 64 -- --fastv-k 1`, then `-- --fastv-k 3`: the second run must answer everything again in its own
    file, not re-score the first run's answers."""
    root = str(tmp_path / "eval")
    generate(root, ["pope"])
    env = {"MODEL_PATH": tiny_hf, "DATA_ROOT": root, "CUDA_VISIBLE_DEVICES": ""}
    answers_root = os.path.join(root, "pope", "answers", "tiny-llava-hf")
    runs = {}
    for k in ("1", "3"):
        proc = _script("FastV/pope.sh", "64", "--", "--fastv-k", k, "--max_new_tokens", "2", "--num-workers", "0",
                       env_extra=env)
        assert "0 already answered, 6 to run" in proc.stdout
        runs[k] = read_jsonl(os.path.join(answers_root, f"fastv_fastv-k-{k}_max-new-tokens-2", "64.jsonl"))
    assert [a["metadata"]["method_args"]["fastv_k"] for a in runs["1"] + runs["3"]] == [1] * 6 + [3] * 6
    assert sorted(os.listdir(answers_root)) == ["fastv_fastv-k-1_max-new-tokens-2", "fastv_fastv-k-3_max-new-tokens-2"]


def test_eval_mini_lists_the_next_methods_the_family_runs(capsys):
    from llava.compression.families import get_family
    from llava.compression.registry import get_method
    from llava.eval.make_scripts import DISPLAY

    assert make_scripts_main(["--supported", "llava-next"]) == 0
    folders = capsys.readouterr().out.split()
    family = get_family("llava-next")
    assert "baseline" in folders
    for name in DISPLAY:  # exactly the methods the family does not refuse
        assert (DISPLAY[name] in folders) == (family.refusal(get_method(name)) is None)
    assert make_scripts_main(["--supported", "no-such-family"]) == 2
