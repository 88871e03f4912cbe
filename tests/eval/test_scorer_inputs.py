"""What the scorers refuse or repair in an answers file: answers paired by question id whatever the file
order, missing / extra / repeated ids, answers made with different settings. Each error is one line."""

import json

import pytest

from llava.data import mini
from llava.eval import eval_pope, eval_science_qa
from llava.eval.benchmarks import __main__ as bench_cli
from llava.eval.benchmarks import score
from llava.eval.benchmarks.common import AnswerIdError, MixedSettingsError, run_cli
from llava.eval.benchmarks.pope import score_pope


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    mini.generate(root, ["pope", "mme", "sqa"])
    answers = {name: mini.write_reference_answers(root, name) for name in ("pope", "mme", "sqa")}
    return root, answers


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _score(root, path, bench="pope"):
    return score(bench, path, data_root=root, results_file=path.with_suffix(".result.json"), write_converted=False)


def _one_line_error(capsys, argv, main=bench_cli.main):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- pairing by question id ----------------------------------------------------------------------


def test_pope_reordered_file_scores_as_in_order(data, tmp_path, capsys):
    root, answers = data
    in_order = _score(root, answers["pope"])
    reordered = _write(tmp_path / "reversed.jsonl", _records(answers["pope"])[::-1])
    # upstream zips each split's answers, in file order, with the labels: reversed gold answers scored 0
    assert _score(root, reordered)["headline"] == in_order["headline"] == 100.0
    assert run_cli(eval_pope.main, ["--annotation-dir", str(root / "pope" / "coco"), "--question-file",
                                    str(root / "pope" / "llava_pope_test.jsonl"), "--result-file", str(reordered)]) == 0
    assert "Average F1 score: 100.00" in capsys.readouterr().out


def test_score_pope_pairs_labels_by_question_id():
    questions = [{"question_id": i, "category": "random"} for i in (1, 2, 3, 4)]
    labels = {"random": ["yes", "no", "yes", "no"]}
    texts = {1: "Yes", 2: "Yes", 3: "No", 4: "No"}  # TP 1 (q1), FP 1 (q2), FN 1 (q3), TN 1 (q4)
    in_order = score_pope([{"question_id": q, "text": texts[q]} for q in (1, 2, 3, 4)], questions, labels)
    shuffled = score_pope([{"question_id": q, "text": texts[q]} for q in (3, 1, 4, 2)], questions, labels)
    assert in_order["splits"]["random"]["f1"] == pytest.approx(50.0)  # P = R = 1/2
    assert shuffled["splits"] == in_order["splits"]


def test_mme_reordered_file_scores_as_in_order(data, tmp_path):
    root, answers = data
    recs = _records(answers["mme"])
    # existence: images 1 and 2, two questions each; make the second question of both images wrong
    for i in (1, 3):
        recs[i]["text"] = "No" if recs[i]["text"] == "Yes" else "Yes"
    in_order = _score(root, _write(tmp_path / "in_order.jsonl", recs), "mme")
    existence = in_order["metrics"]["subtasks"]["existence"]
    assert (existence["acc"], existence["acc_plus"]) == (50.0, 0.0)  # no image has both right
    # interleaved: upstream would pair (img1 q1, img2 q1) -> both right, and report acc+ 50
    interleaved = _write(tmp_path / "interleaved.jsonl", [recs[0], recs[2], recs[1], recs[3]] + recs[4:])
    assert _score(root, interleaved, "mme")["metrics"] == in_order["metrics"]


# --- missing, extra and repeated ids -------------------------------------------------------------


def test_missing_extra_and_repeated_ids_are_one_line_errors(data, tmp_path, capsys):
    root, answers = data
    recs = _records(answers["pope"])
    base = ["score", "pope", "--data-root", str(root), "--no-converted", "--results-file", str(tmp_path / "r.json")]
    missing = _write(tmp_path / "missing.jsonl", recs[:2] + recs[3:])
    err = _one_line_error(capsys, base + ["--answers-file", str(missing)])
    assert "no answer for 1 of 6 questions" in err and "20000001" in err and "resume" in err
    extra = _write(tmp_path / "extra.jsonl", recs + [dict(recs[0], question_id=999)])
    err = _one_line_error(capsys, base + ["--answers-file", str(extra)])
    assert "1 question id(s) that are not in" in err and "999" in err
    repeated = _write(tmp_path / "repeated.jsonl", recs + [recs[4]])
    err = _one_line_error(capsys, base + ["--answers-file", str(repeated)])
    assert "more often than" in err and str(recs[4]["question_id"]) in err and "x2" in err
    with pytest.raises(AnswerIdError):
        _score(root, repeated)


def test_many_missing_ids_are_listed_briefly(data, tmp_path, capsys):
    root, answers = data
    recs = _records(answers["pope"])
    err = _one_line_error(capsys, ["score", "pope", "--data-root", str(root), "--no-converted", "--answers-file",
                                   str(_write(tmp_path / "one.jsonl", recs[:1]))])
    assert "no answer for 5 of 6 questions" in err and "and 0 more" not in err
    assert err.count(",") <= 5


def test_mme_ids_repeat_as_often_as_the_question_file_asks(data, tmp_path, capsys):
    root, answers = data
    recs = _records(answers["mme"])
    assert recs[0]["question_id"] == recs[1]["question_id"]  # two questions per image, one id
    assert _score(root, answers["mme"], "mme")["headline"] is not None
    err = _one_line_error(capsys, ["score", "mme", "--data-root", str(root), "--no-converted", "--answers-file",
                                   str(_write(tmp_path / "three.jsonl", recs + [recs[0]]))])
    assert f"{recs[0]['question_id']!r} x3 (asked 2x)" in err


def test_unique_id_scorer_refuses_a_repeated_answer(data, tmp_path, capsys):
    root, answers = data
    recs = _records(answers["sqa"])
    repeated = _write(tmp_path / "sqa.jsonl", recs + [dict(recs[0], text="Z")])
    err = _one_line_error(capsys, ["--base-dir", str(root / "scienceqa"), "--result-file", str(repeated)],
                          eval_science_qa.main)
    assert "more than once" in err and repr(str(recs[0]["question_id"])) in err


def test_mmbench_rounds_are_questions_of_their_own(tmp_path):
    from llava.eval.benchmarks.mmbench import row_options
    from llava.eval.benchmarks.registry import load_question_file

    root = tmp_path / "eval"
    mini.generate(root, ["mmbench"])
    rows = load_question_file(root / "mmbench" / "mmbench_dev_20230712.tsv")
    first = _records(mini.write_reference_answers(root, "mmbench"))[0]
    # --all-rounds: one answer per row and round (the options rotate; these answers need not be right)
    rounds = [dict(first, question_id=int(r["index"]), round_id=k) for r in rows for k in range(len(row_options(r)))]
    path = _write(tmp_path / "rounds.jsonl", rounds[::-1])
    assert score("mmbench", path, data_root=root, write_converted=False)["metrics"]["num_attempts"] == len(rounds)
    with pytest.raises(AnswerIdError, match="no answer for 1 of"):
        score("mmbench", _write(tmp_path / "short.jsonl", rounds[:-1]), data_root=root, write_converted=False)
    with pytest.raises(AnswerIdError, match="more often than"):
        score("mmbench", _write(tmp_path / "twice.jsonl", rounds + rounds[-1:]), data_root=root, write_converted=False)


# --- settings ------------------------------------------------------------------------------------


def _with_method(rec, method, budget):
    return dict(rec, metadata={"method": method, "method_args": {"visual_token_num": budget},
                               "run": {"conv_mode": "vicuna_v1", "max_new_tokens": 128, "temperature": 0,
                                       "top_p": None, "num_beams": 1}})


def test_mixed_settings_are_refused(data, tmp_path, capsys):
    root, answers = data
    recs = _records(answers["pope"])
    mixed = [_with_method(r, "fastervlm", 64) if i < 3 else _with_method(r, "vtc-cls", 128)
             for i, r in enumerate(recs)]
    path = _write(tmp_path / "mixed.jsonl", mixed)
    err = _one_line_error(capsys, ["score", "pope", "--data-root", str(root), "--no-converted",
                                   "--answers-file", str(path)])
    assert "record 4" in err and "method" in err and str(path) in err
    with pytest.raises(MixedSettingsError):
        _score(root, path)
    same = _write(tmp_path / "same.jsonl", [_with_method(r, "fastervlm", 64) for r in recs])
    assert _score(root, same)["headline"] == 100.0


def test_answers_without_settings_still_score(data, tmp_path):
    root, answers = data
    recs = _records(answers["pope"])
    no_metadata = _write(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "metadata"} for r in recs])
    assert _score(root, no_metadata)["headline"] == 100.0
    llava_style = _write(tmp_path / "llava.jsonl", [dict(r, metadata={}) for r in recs])  # the original repo's
    assert _score(root, llava_style)["headline"] == 100.0


def test_records_with_and_without_settings_are_refused(data, tmp_path):
    root, answers = data
    recs = _records(answers["pope"])
    half = [_with_method(r, "fastervlm", 64) if i % 2 else dict(r, metadata={}) for i, r in enumerate(recs)]
    with pytest.raises(MixedSettingsError, match="with and without recorded settings .record 2,"):
        _score(root, _write(tmp_path / "half.jsonl", half))


# --- file names ----------------------------------------------------------------------------------


def test_baseline_results_file_is_named_full_like_its_answers(data):
    root, answers = data  # the reference answers record method "none"
    record = score("pope", answers["pope"], data_root=root, checkpoint="llava-v1.5-7b")
    assert record["results_file"].endswith("pope/results/llava-v1.5-7b/none/full.json")
    assert record["visual_tokens"] == 576  # the token count itself is unchanged
    compressed = score("pope", answers["pope"], data_root=root, checkpoint="llava-v1.5-7b", method="fastervlm",
                       visual_tokens=64, write_converted=False)
    assert compressed["results_file"].endswith("fastervlm/64.json")
