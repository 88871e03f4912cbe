"""The thin scorer CLIs: they run on the mini fixtures, and bad inputs give one-line errors, no traceback."""

import json
import subprocess
import sys
import zipfile

import pytest

from llava.data import mini
from llava.eval import (
    convert_gqa_for_eval,
    convert_mmbench_for_submission,
    convert_mmvet_for_eval,
    convert_seed_for_submission,
    convert_vizwiz_for_submission,
    convert_vqav2_for_submission,
    eval_gqa,
    eval_mme,
    eval_pope,
    eval_science_qa,
    eval_textvqa,
)
from llava.eval.benchmarks import __main__ as bench_cli
from llava.eval.benchmarks.common import run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    mini.generate(root)
    answers = {name: mini.write_reference_answers(root, name) for name in mini.BUILDERS}
    return root, answers


def test_eval_science_qa(data, tmp_path, capsys):
    root, answers = data
    rc = run_cli(eval_science_qa.main, ["--base-dir", str(root / "scienceqa"), "--result-file", str(answers["sqa"]),
                                         "--output-file", str(tmp_path / "o.json"),
                                         "--output-result", str(tmp_path / "r.json")])
    assert rc == 0
    assert "Total: 5, Correct: 5, Accuracy: 100.00%, IMG-Accuracy: 100.00%" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["acc"] == 100.0


def test_eval_textvqa_pope_gqa_mme(data, tmp_path, capsys):
    root, answers = data
    assert run_cli(eval_textvqa.main, ["--annotation-file", str(root / "textvqa" / "TextVQA_0.5.1_val.json"),
                                       "--result-file", str(answers["textvqa"])]) == 0
    assert "Accuracy: 100.00%" in capsys.readouterr().out
    assert run_cli(eval_pope.main, ["--annotation-dir", str(root / "pope" / "coco"),
                                    "--question-file", str(root / "pope" / "llava_pope_test.jsonl"),
                                    "--result-file", str(answers["pope"])]) == 0
    out = capsys.readouterr().out
    assert "Category: adversarial, # samples: 2" in out and "Average F1 score: 100.00" in out
    dst = tmp_path / "gqa_pred.json"
    assert run_cli(convert_gqa_for_eval.main, ["--src", str(answers["gqa"]), "--dst", str(dst)]) == 0
    assert run_cli(eval_gqa.main, ["--questions", str(root / "gqa/data/testdev_balanced_questions.json"),
                                   "--predictions", str(dst)]) == 0
    assert "Accuracy: 100.00%" in capsys.readouterr().out
    assert run_cli(eval_mme.main, ["--answers-file", str(answers["mme"]),
                                   "--mme-dir", str(root / "MME" / "MME_Benchmark_release_version"),
                                   "--results-dir", str(tmp_path / "mme")]) == 0
    out = capsys.readouterr().out
    assert "total score: 400.0" in out and "total score: 200.0" in out
    assert (tmp_path / "mme" / "existence.txt").exists()


def test_converters(data, tmp_path, capsys):
    root, answers = data
    up = tmp_path / "vqav2.json"
    assert run_cli(convert_vqav2_for_submission.main, ["--dir", str(root / "vqav2"), "--src", str(answers["vqav2"]),
                                                       "--dst", str(up)]) == 0
    upload = json.loads(up.read_text())
    assert len(upload) == 6 and upload[-1]["answer"] == ""  # test-std-only questions are blank
    assert run_cli(convert_vizwiz_for_submission.main, [
        "--annotation-file", str(root / "vizwiz" / "llava_test.jsonl"), "--result-file", str(answers["vizwiz"]),
        "--result-upload-file", str(tmp_path / "vizwiz.json")]) == 0
    assert json.loads((tmp_path / "vizwiz.json").read_text())[0]["image"] == "VizWiz_test_00000000.jpg"
    assert run_cli(convert_seed_for_submission.main, [
        "--annotation-file", str(root / "seed_bench" / "SEED-Bench.json"), "--result-file", str(answers["seed"]),
        "--result-upload-file", str(tmp_path / "seed.jsonl")]) == 0
    assert "image accuracy: 100.00%" in capsys.readouterr().out
    assert run_cli(convert_mmbench_for_submission.main, [
        "--annotation-file", str(root / "mmbench" / "mmbench_dev_20230712.tsv"),
        "--result-dir", str(answers["mmbench"].parent), "--upload-dir", str(tmp_path / "mmb"),
        "--experiment", "reference"]) == 0
    assert "local circular accuracy: 100.00%" in capsys.readouterr().out
    assert zipfile.is_zipfile(tmp_path / "mmb" / "reference.xlsx")
    assert run_cli(convert_mmvet_for_eval.main, ["--src", str(answers["mmvet"]), "--dst", str(tmp_path / "mv.json")]) == 0
    assert set(json.loads((tmp_path / "mv.json").read_text())) == {"v1_0", "v1_1", "v1_2"}


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_errors_are_one_line(data, tmp_path, capsys):
    root, answers = data
    err = _one_line_error(capsys, run_cli(eval_textvqa.main, ["--annotation-file", str(tmp_path / "nope.json"),
                                                              "--result-file", str(answers["textvqa"])]))
    assert "not found" in err and "nope.json" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "text": "yes"}\n{not json\n')
    err = _one_line_error(capsys, run_cli(eval_pope.main, ["--annotation-dir", str(root / "pope" / "coco"),
                                                           "--question-file", str(root / "pope/llava_pope_test.jsonl"),
                                                           "--result-file", str(bad)]))
    assert "line 2 is not valid JSON" in err
    nokey = tmp_path / "nokey.jsonl"
    nokey.write_text('{"question_id": 1}\n')
    err = _one_line_error(capsys, run_cli(eval_science_qa.main, ["--base-dir", str(root / "scienceqa"),
                                                                 "--result-file", str(nokey)]))
    assert "has no 'text'" in err
    err = _one_line_error(capsys, run_cli(eval_mme.main, ["--answers-file", str(answers["mme"]),
                                                          "--mme-dir", str(tmp_path)]))
    assert "no MME ground-truth" in err
    err = _one_line_error(capsys, run_cli(bench_cli.main, ["score", "gqa", "--answers-file", str(answers["gqa"]),
                                                           "--data-root", str(tmp_path)]))
    assert "benchmark folder not found" in err


def test_module_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llava.eval.benchmarks", "score", "pope",
                           "--answers-file", str(tmp_path / "missing.jsonl"), "--data-root", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_unified_score_cli(data, tmp_path, capsys):
    root, answers = data
    rc = run_cli(bench_cli.main, ["score", "pope", "--answers-file", str(answers["pope"]), "--data-root", str(root),
                                  "--method", "fastervlm", "--visual-tokens", "144",
                                  "--method-args", '{"visual_token_num": 144}',
                                  "--results-file", str(tmp_path / "r.json")])
    assert rc == 0
    assert "pope reference fastervlm tokens=144: mean_f1 = 100.00" in capsys.readouterr().out
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["method_args"] == {"visual_token_num": 144} and rec["visual_tokens"] == 144
    assert run_cli(bench_cli.main, ["list"]) == 0
    assert "model_vqa_science --single-pred-prompt" in capsys.readouterr().out


def test_token_label_and_input_errors(data, tmp_path):
    root, answers = data
    recs = [json.loads(line) for line in answers["pope"].read_text().splitlines()]
    for i, r in enumerate(recs):
        # an in-LLM method: 576 tokens reach the LLM input, the budget is in method_args
        r["metadata"] = {"method": "fastv", "method_args": {"visual_token_num": 32, "k": 2}, "visual_tokens": 576}
        if i == 0:
            r["text"], r["metadata"]["error"] = "", "cannot open image"
    path = tmp_path / "fastv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    from llava.eval.benchmarks import score

    rec = score("pope", path, data_root=root, results_file=tmp_path / "r.json", write_converted=False)
    assert rec["visual_tokens"] == 32 and rec["visual_tokens_mean"] == 576.0 and rec["method"] == "fastv"
    assert rec["num_input_errors"] == 1 and any("input error" in w for w in rec["warnings"])
    # the first answer (adversarial, label yes) became "" -> still parsed as yes, as upstream
    assert rec["metrics"]["splits"]["adversarial"]["f1"] == 100.0
