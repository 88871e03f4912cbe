"""The mini fixtures: every benchmark's files load in their real format, and every registered scorer
runs end to end on answer files built from the fixture's own questions (gold and constant answers)."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from llava.data import mini
from llava.eval.benchmarks import TASKS, score
from llava.eval.benchmarks.common import read_json, read_jsonl, read_tsv
from llava.eval.benchmarks.mmbench import row_options


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    mini.generate(out)
    return out


def test_folders_match_registry():
    assert set(mini.BUILDERS) == set(TASKS)
    for name, (folder, _build) in mini.BUILDERS.items():
        assert folder == TASKS[name].data_dir


def test_small_and_deterministic(root, tmp_path):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) < 1_000_000
    mini.generate(tmp_path / "again")
    again = sorted(p for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert [p.relative_to(root) for p in files] == [p.relative_to(tmp_path / "again") for p in again]
    for a, b in zip(files, again):
        assert a.read_bytes() == b.read_bytes(), a


def test_every_question_file_and_image_loads(root):
    for name, task in TASKS.items():
        questions = task.load_questions(root)
        assert 3 <= len(questions) <= 8, name
        for q in questions:
            if name == "sqa":
                assert q["conversations"][0]["from"] == "human"
                if "image" in q:
                    Image.open(root / task.data_dir / task.image_folder / q["image"]).verify()
            elif name.startswith("mmbench"):
                assert q["image"] and row_options(q)
            else:
                assert {"question_id", "image", "text"} <= q.keys(), name
                Image.open(root / task.data_dir / task.image_folder / q["image"]).verify()
    sqa = TASKS["sqa"].load_questions(root)
    assert sum("image" not in q for q in sqa) >= 2  # text-only items


def test_real_annotation_layouts(root):
    assert read_json(root / "textvqa" / "TextVQA_0.5.1_val.json")["data"][0]["answers"]
    assert set(read_json(root / "scienceqa" / "pid_splits.json")) >= {"train", "val", "test"}
    for split in ("adversarial", "popular", "random"):  # JSON lines despite the name
        assert read_jsonl(root / "pope" / "coco" / f"coco_pope_{split}.json")[0][0]["label"] in ("yes", "no")
    assert all(q["isBalanced"] for q in read_json(root / "gqa/data/testdev_balanced_questions.json").values())
    seed = read_json(root / "seed_bench" / "SEED-Bench.json")
    assert {q["data_type"] for q in seed["questions"]} == {"image", "video"}
    header, _rows = read_tsv(root / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv")
    assert header[:8] == ["index", "question", "hint", "A", "B", "C", "D", "answer"]
    mme_root = root / "MME" / "MME_Benchmark_release_version"
    assert (mme_root / "artwork" / "questions_answers_YN").is_dir()
    assert list((mme_root / "existence").glob("*.txt"))


# --- answer files built from the fixture --------------------------------------------------------


def test_reference_answers_cli(tmp_path):
    assert mini.main(["--out", str(tmp_path), "--benchmarks", "pope,sqa", "--reference-answers"]) == 0
    recs = read_jsonl(tmp_path / "scienceqa" / "answers" / "reference.jsonl")[0]
    assert recs[0]["prompt"].startswith("<image>\n") and recs[0]["model_id"] == "reference"
    assert not recs[2]["prompt"].startswith("<image>")  # a text-only item
    assert mini.main(["--out", str(tmp_path), "--benchmarks", "nope"]) == 2


def write_answers(path: Path, answers: list[dict], method="none", tokens=576) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, a in enumerate(answers):
            rec = {"question_id": a.pop("question_id"), "prompt": a.pop("prompt", ""), "text": a.pop("text"),
                   **a, "answer_id": f"ans{i}", "model_id": "tiny-llava",
                   "metadata": {"method": method, "method_args": {}, "visual_tokens": tokens}}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


GOLD_HEADLINE = {
    "gqa": 100.0, "sqa": 100.0, "textvqa": 100.0, "pope": 100.0, "mmbench": 100.0, "mmbench_cn": 100.0,
    "seed": 100.0, "vqav2": 100.0, "vizwiz": 100.0, "mmvet": None, "llavabench": None,
    # MME mini: existence (2 images) + artwork (1 image) are perception, code_reasoning cognition;
    # every subtask scores 100 * 1 + 100 * 1 = 200
    "mme": 400.0,
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_gold_answers_score_perfectly(root, tmp_path, name):
    answers = write_answers(tmp_path / "answers" / f"{name}.jsonl", mini.reference_answers(root, name))
    annotation = None
    if name in ("vqav2", "vizwiz"):
        annotation = root / TASKS[name].data_dir / "annotations_mini.json"
    rec = score(name, answers, data_root=root, annotation_file=annotation,
                results_file=tmp_path / "results.json", converted_file=tmp_path / "converted")
    if GOLD_HEADLINE[name] is None:
        assert rec["headline"] is None
    else:
        assert rec["headline"] == pytest.approx(GOLD_HEADLINE[name])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("benchmark", "checkpoint", "method", "method_args", "visual_tokens", "headline_metric",
                "headline", "metrics", "answers_file", "num_answers"):
        assert key in on_disk
    assert on_disk["checkpoint"] == "tiny-llava" and on_disk["method"] == "none" and on_disk["visual_tokens"] == 576
    if name == "mme":
        assert on_disk["metrics"]["cognition"] == pytest.approx(200.0)
    if TASKS[name].converted_ext is not None:
        assert (tmp_path / "converted").exists()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_constant_answers_run_and_default_paths(root, tmp_path, name):
    data_root = tmp_path / "eval"
    shutil.copytree(root / TASKS[name].data_dir, data_root / TASKS[name].data_dir)
    answers = mini.reference_answers(root, name)
    for a in answers:
        a["text"] = "Yes"
    path = write_answers(tmp_path / "a.jsonl", answers, method="fastervlm", tokens=64)
    rec = score(name, path, data_root=data_root)
    expected = data_root / TASKS[name].data_dir / "results" / "tiny-llava" / "fastervlm" / "64.json"
    assert Path(rec["results_file"]) == expected and expected.exists()
    if name == "pope":
        assert rec["metrics"]["splits"]["random"]["yes_ratio"] == 100.0
    if TASKS[name].converted_ext is not None:
        assert Path(rec["converted_file"]).exists()
