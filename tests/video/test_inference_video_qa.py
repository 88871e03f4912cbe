"""End-to-end zero-shot video QA inference on tiny checkpoints and generated videos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from videollava.eval import run_inference_video_qa as qa
from videollava.eval.eval_video_qa import load_predictions
from videollava.model.tiny import TinyVideoGeometry, write_hf_layout, write_original_layout

G = TinyVideoGeometry(vision_layers=4, text_layers=2)
REPO = Path(__file__).resolve().parents[2]

# (video name, question); conftest's video_dir holds clip37.mp4/.avi, clip5.mp4 and corrupt files
QA = [
    ("clip37", "what color is the screen?"),
    ("clip5", "is it moving?"),
    ("garbage", "what happens?"),
    ("clip37", "how many frames are there?"),
    ("not_there", "where is it?"),
    ("clip5", "anything else?"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_original_layout(str(tmp_path_factory.mktemp("vl") / "Video-LLaVA-tiny"), seed=0, temporal="random",
                                 g=G)


def write_qa(folder: Path, qa=QA, suffix: str = "") -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    questions = [{"video_name": v, "question": q, "question_id": f"v_{v}_{i}"} for i, (v, q) in enumerate(qa)]
    answers = [{"answer": "yes" if i % 2 else "blue", "type": i % 3, "question_id": f"v_{v}_{i}"}
               for i, (v, _) in enumerate(qa)]
    # answers in another order: the two files are joined by question_id
    answers = answers[::-1]
    qf, af = folder / f"test_q{suffix}.json", folder / f"test_a{suffix}.json"
    qf.write_text(json.dumps(questions))
    af.write_text(json.dumps(answers))
    return str(qf), str(af)


def run(argv: list[str]) -> int:
    try:
        qa.main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def base_args(ckpt, video_dir, qf, af, out, name, *extra) -> list[str]:
    return ["--model-path", ckpt, "--video-dir", str(video_dir), "--gt-file-question", qf, "--gt-file-answers", af,
            "--output-dir", str(out), "--output-name", name, "--max_new_tokens", "3", "--num-workers", "0",
            "--device", "cpu", *extra]


def read(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_chunks_resume_and_bad_inputs(ckpt, video_dir, tmp_path, capsys):
    qf, af = write_qa(tmp_path / "qa")
    out = tmp_path / "out"
    method = ["--method", "fastervlm", "--visual-token-num", "8", "--skip-bad-inputs", "--batch-size", "2"]
    for idx in (0, 1):
        assert run(base_args(ckpt, video_dir, qf, af, out, f"2_{idx}", "--num-chunks", "2", "--chunk-idx", str(idx),
                             *method)) == 0
    chunk0, chunk1 = read(out / "2_0.json"), read(out / "2_1.json")
    ids = [f"v_{v}_{i}" for i, (v, _) in enumerate(QA)]
    assert [r["id"] for r in chunk0 + chunk1] == ids  # every question once, in order
    assert [r["id"] for r in chunk0] == ids[:3]

    merged = tmp_path / "merge.jsonl"
    merged.write_text((out / "2_0.json").read_text() + (out / "2_1.json").read_text())
    records, skipped = load_predictions(merged)  # the judge reads the file
    assert sorted(skipped) == ["v_garbage_2", "v_not_there_4"]
    assert "garbage.mp4" in skipped["v_garbage_2"] and "video not found" in skipped["v_not_there_4"]
    assert len(records) == 4 and all(isinstance(r.pred, str) for r in records)
    by_id = {r["id"]: r for r in chunk0 + chunk1}
    first = by_id["v_clip37_0"]
    assert first["question_id"] == first["id"] and first["answer"] == "blue" and first["video_name"] == "clip37"
    meta = first["metadata"]
    assert meta["method"] == "fastervlm" and meta["method_args"]["visual_token_num"] == 8
    assert meta["visual_tokens"] == 64 and meta["tokens_per_frame"] == [8] * 8
    assert meta["keep_cls"] is False and meta["budget_mode"] == "per-frame"
    assert meta["layout"] == "original" and meta["temporal_attention"] is True
    assert meta["frames"]["transform"] == "languagebind" and meta["frames"]["random_flip"] is False
    assert meta["decoding"]["do_sample"] is False and "kept_indices" not in meta
    bad = by_id["v_garbage_2"]
    assert "pred" not in bad and bad["error"] == bad["metadata"]["error"]

    # resume: nothing to do, nothing loaded, file unchanged
    before = (out / "2_0.json").read_text()
    capsys.readouterr()
    assert run(base_args(ckpt, video_dir, qf, af, out, "2_0", "--num-chunks", "2", "--chunk-idx", "0", *method)) == 0
    assert "3 already answered, 0 to run" in capsys.readouterr().out
    assert (out / "2_0.json").read_text() == before

    # a run killed mid-write: the cut line is dropped and only that question runs again
    text = (out / "2_1.json").read_text().splitlines(keepends=True)
    (out / "2_1.json").write_text("".join(text[:-1]) + text[-1][:25])
    assert run(base_args(ckpt, video_dir, qf, af, out, "2_1", "--num-chunks", "2", "--chunk-idx", "1", *method)) == 0
    assert "2 already answered, 1 to run" in capsys.readouterr().out
    assert [r["id"] for r in read(out / "2_1.json")] == ids[3:]

    # --retry-errors reruns the recorded errors (still unreadable: recorded again, once)
    assert run(base_args(ckpt, video_dir, qf, af, out, "2_0", "--num-chunks", "2", "--chunk-idx", "0",
                         "--retry-errors", *method)) == 0
    assert "2 already answered, 1 to run" in capsys.readouterr().out
    assert [r["id"] for r in read(out / "2_0.json")] == ids[:3]  # the retried answer back in question order


def test_corrupt_video_stops_with_a_clear_error(ckpt, video_dir, tmp_path, capsys):
    qf, af = write_qa(tmp_path / "qa", [("garbage", "what?")])
    assert run(base_args(ckpt, video_dir, qf, af, tmp_path / "out", "1_0")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: question 'v_garbage_0': cannot read video")
    assert "garbage.mp4" in err and "--skip-bad-inputs" in err
    assert read(tmp_path / "out" / "1_0.json") == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "fastervlm", "--visual-token-num", "300"], "--visual-token-num must be between 1 and 256"),
        (["--method", "random", "--visual-token-num", "8", "--budget-mode", "global"], "fastervlm only"),
        (["--keep-cls"], "only apply with a compression --method"),
        (["--method", "tome"], "only pre-LLM methods"),
        (["--method", "fastv", "--fastv-k", "1", "--budget-mode", "global"], "apply to pre-LLM methods"),
        (["--num-chunks", "2", "--chunk-idx", "2"], "--chunk-idx must be in"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
    ],
)
def test_arguments_are_validated_before_the_model_loads(ckpt, video_dir, tmp_path, capsys, monkeypatch, extra,
                                                        message):
    import videollava.model.builder as builder

    monkeypatch.setattr(builder, "load_pretrained_model", lambda *a, **k: pytest.fail("model loaded"))
    qf, af = write_qa(tmp_path / "qa")
    assert run(base_args(ckpt, video_dir, qf, af, tmp_path / "out", "1_0", *extra)) == 2
    assert message in capsys.readouterr().err


def test_data_errors_name_the_file(ckpt, video_dir, tmp_path, capsys):
    qf, af = write_qa(tmp_path / "qa")
    assert run(base_args(ckpt, video_dir, qf, str(tmp_path / "none.json"), tmp_path / "out", "1_0")) == 2
    assert "answer file not found" in capsys.readouterr().err
    assert run(base_args(ckpt, tmp_path / "no-videos", qf, af, tmp_path / "out", "1_0")) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_hf_layout_and_keep_all_equal_none(ckpt, video_dir, tmp_path):
    qf, af = write_qa(tmp_path / "qa", QA[:1])
    none_out, keep_out = tmp_path / "none", tmp_path / "keep"
    assert run(base_args(ckpt, video_dir, qf, af, none_out, "1_0")) == 0
    assert run(base_args(ckpt, video_dir, qf, af, keep_out, "1_0", "--method", "fastervlm",
                         "--visual-token-num", "256", "--keep-cls")) == 0
    none, keep = read(none_out / "1_0.json"), read(keep_out / "1_0.json")
    assert [r["pred"] for r in none] == [r["pred"] for r in keep]
    assert [r["metadata"]["visual_tokens"] for r in none] == [r["metadata"]["visual_tokens"] for r in keep] == [2056]
    assert none[0]["metadata"]["method"] == "none"

    hf = write_hf_layout(str(tmp_path / "hf"), seed=0, g=G)
    assert run(base_args(hf, video_dir, qf, af, tmp_path / "hf-out", "1_0", "--method", "fastervlm",
                         "--visual-token-num", "4", "--budget-mode", "global", "--save-kept-tokens")) == 0
    rec = read(tmp_path / "hf-out" / "1_0.json")[0]
    meta = rec["metadata"]
    assert meta["layout"] == "hf" and meta["temporal_attention"] is False and meta["frames"]["transform"] == "clip"
    assert meta["budget_mode"] == "global" and meta["visual_tokens"] == 32 and sum(meta["tokens_per_frame"]) == 32
    assert len(meta["kept_indices"]) == 8


def test_in_llm_method_metadata(ckpt, video_dir, tmp_path, capsys):
    qf, af = write_qa(tmp_path / "qa", QA[:1])
    assert run(base_args(ckpt, video_dir, qf, af, tmp_path / "out", "1_0", "--method", "fastv", "--fastv-k", "1",
                         "--visual-token-num", "512")) == 0
    meta = read(tmp_path / "out" / "1_0.json")[0]["metadata"]
    assert meta["method"] == "fastv" and meta["stage"] == "llm" and meta["method_args"]["visual_token_num"] == 512
    assert meta["visual_tokens"] == 2056 and meta["visual_tokens_per_layer"] == [2056, 512]
    assert "averaged over the LLM's layers: 1284.0" in capsys.readouterr().out


@pytest.mark.slow
def test_run_qa_script_chunks_over_visible_gpus_and_merges(ckpt, video_dir, tmp_path):
    root = tmp_path / "GPT_Zero_Shot_QA"
    msvd = root / "MSVD_Zero_Shot_QA"
    (msvd / "videos").mkdir(parents=True)
    for name in ("clip37.mp4", "clip5.mp4"):
        shutil.copy(video_dir / name, msvd / "videos" / name)
    write_qa(msvd, [QA[0], QA[1], QA[3]], suffix="_1k")
    env = dict(os.environ, DATA_ROOT=str(root), MODEL_PATH=ckpt, CKPT="tiny", CUDA_VISIBLE_DEVICES="0,1",
               PYTHON=sys.executable, EXTRA_ARGS="--max_new_tokens 2 --num-workers 0 --device cpu")
    proc = subprocess.run(["bash", str(REPO / "scripts/video/eval/run_qa_msvd.sh"), "16"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = msvd / "answers" / "tiny" / "fastervlm_max-new-tokens-2" / "16"  # EXTRA_ARGS settings are in the path
    assert (out / "2_0.json").is_file() and (out / "2_1.json").is_file()
    merged = read(out / "merge.jsonl")
    assert [r["id"] for r in merged] == ["v_clip37_0", "v_clip5_1", "v_clip37_2"]
    assert all(r["metadata"]["visual_tokens"] == 128 for r in merged)
    assert "eval_qa_msvd.sh 16 fastervlm_max-new-tokens-2 tiny" in proc.stdout

    # EXTRA_ARGS="--budget-mode global" is another setting: its own folder, every question answered again
    global_env = dict(env, CUDA_VISIBLE_DEVICES="0", EXTRA_ARGS=env["EXTRA_ARGS"] + " --budget-mode global")
    proc = subprocess.run(["bash", str(REPO / "scripts/video/eval/run_qa_msvd.sh"), "16"], env=global_env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 already answered, 3 to run" in proc.stdout
    merged = read(msvd / "answers" / "tiny" / "fastervlm_budget-mode-global_max-new-tokens-2" / "16" / "merge.jsonl")
    assert [r["metadata"]["budget_mode"] for r in merged] == ["global"] * 3


def test_resume_refuses_another_budget_mode(ckpt, video_dir, tmp_path, capsys):
    qf, af = write_qa(tmp_path / "qa", QA[:1])
    out = tmp_path / "out"
    method = ["--method", "fastervlm", "--visual-token-num", "4"]
    assert run(base_args(ckpt, video_dir, qf, af, out, "1_0", *method)) == 0
    before = (out / "1_0.json").read_text()
    assert read(out / "1_0.json")[0]["metadata"]["run"]["budget_mode"] == "per-frame"
    capsys.readouterr()
    assert run(base_args(ckpt, video_dir, qf, af, out, "1_0", *method, "--budget-mode", "global")) == 2
    err = capsys.readouterr().err
    assert 'run.budget_mode: "per-frame" vs "global"' in err and "--overwrite" in err and "Traceback" not in err
    assert run(base_args(ckpt, video_dir, qf, af, out, "1_0", *method, "--budget-mode", "per-frame")) == 0
    assert (out / "1_0.json").read_text() == before  # the explicit default is the same setting: resumed


def test_empty_question_file_and_answers_over_an_input_are_refused(ckpt, video_dir, tmp_path, capsys):
    qf, af = write_qa(tmp_path / "qa", [])
    assert run(base_args(ckpt, video_dir, qf, af, tmp_path / "out", "1_0")) == 2
    assert f"question file {qf} holds no questions" in capsys.readouterr().err
    qf, af = write_qa(tmp_path / "qa2", QA[:1])
    before = Path(qf).read_text()
    output_dir, name = os.path.dirname(qf), os.path.basename(qf)[: -len(".json")]
    assert run(base_args(ckpt, video_dir, qf, af, output_dir, name, "--overwrite")) == 2
    assert "is the --gt-file-question file" in capsys.readouterr().err
    assert Path(qf).read_text() == before


@pytest.mark.parametrize("variables, named", [
    ({"DATA_ROOT": "{root}"}, "{root}/MSVD_Zero_Shot_QA/answers/tiny/fastervlm/16/merge.jsonl"),
    ({"EVAL_ROOT": "{root}"}, "{root}/MSVD_Zero_Shot_QA/answers/tiny/fastervlm/16/merge.jsonl"),
    ({"EVAL_ROOT": "{root}", "DATA_ROOT": "{root}/other"}, "differ; they name the same folder"),
])
def test_judge_and_inference_read_one_root_variable(tmp_path, variables, named):
    root = str(tmp_path / "GPT_Zero_Shot_QA")
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_ROOT", "EVAL_ROOT")}
    env.update(CKPT="tiny", PYTHON=sys.executable, **{k: v.format(root=root) for k, v in variables.items()})
    proc = subprocess.run(["bash", str(REPO / "scripts/video/eval/eval_qa_msvd.sh"), "16"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and named.format(root=root) in proc.stderr, proc.stderr


def test_in_llm_method_records_kept_indices_with_save_kept_tokens(ckpt, video_dir, tmp_path):
    qf, af = write_qa(tmp_path / "qa", QA[:1])
    assert run(base_args(ckpt, video_dir, qf, af, tmp_path / "out", "1_0", "--method", "fastv", "--fastv-k", "1",
                         "--visual-token-num", "512", "--save-kept-tokens")) == 0
    meta = read(tmp_path / "out" / "1_0.json")[0]["metadata"]
    kept = meta["llm_kept_indices"]["1"]  # indices into the video's 2056 visual tokens at the LLM input
    assert len(kept) == 512 and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < 2056
    assert run(base_args(ckpt, video_dir, qf, af, tmp_path / "quiet", "1_0", "--method", "fastv", "--fastv-k", "1",
                         "--visual-token-num", "512")) == 0
    assert "llm_kept_indices" not in read(tmp_path / "quiet" / "1_0.json")[0]["metadata"]
