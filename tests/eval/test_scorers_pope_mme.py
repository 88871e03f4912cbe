"""POPE (yes/no parsing, labels paired by question, zero guards) and MME (pairs, acc+). Worked by hand."""

import pytest

from llava.eval.benchmarks import mme
from llava.eval.benchmarks.common import ScorerInputError
from llava.eval.benchmarks.pope import load_labels, parse_yes_no, score_pope, split_metrics


@pytest.mark.parametrize("text, label", [
    ("Yes", "yes"),
    ("No", "no"),
    ("no", "no"),
    ("No.", "no"),
    ("no, there is none", "no"),
    ("There is not a dog", "no"),           # "not" token
    ("Yes, there is no dog.", "no"),        # any "no" token in the first sentence wins
    ("Yes. No", "yes"),                     # only the text before the first "." counts
    ("NO", "yes"),                          # case-sensitive tokens
    ("Nope", "yes"),
    ("nothing", "yes"),
    ("No\nthere", "yes"),                   # split on single spaces only: "No\nthere" is one token
    ("", "yes"),                            # empty / garbage is yes
])
def test_parse_yes_no(text, label):
    assert parse_yes_no(text) == label


def test_split_metrics_by_hand():
    # preds [1,0,0,1,1] vs labels [1,1,0,0,1]: TP 2 (0,4), FN 1 (1), TN 1 (2), FP 1 (3)
    m = split_metrics(["Yes", "No", "no", "Yes", "Yes"], ["yes", "yes", "no", "no", "yes"])
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(200 / 3)  # 2/3
    assert m["recall"] == pytest.approx(200 / 3)     # 2/3
    assert m["f1"] == pytest.approx(200 / 3)         # 2PR/(P+R) = 2/3
    assert m["accuracy"] == pytest.approx(60.0)      # 3/5
    assert m["yes_ratio"] == pytest.approx(60.0)     # 3/5


def test_split_metrics_zero_denominators():
    # never says yes and no positives: TP+FP = TP+FN = 0 -> precision, recall, F1 all 0 (upstream raises)
    m = split_metrics(["No", "No"], ["no", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 100.0, 0.0)
    assert split_metrics([], [])["yes_ratio"] == 0.0


def test_score_pope_interleaved_splits():
    questions = ([{"question_id": i, "category": "adversarial"} for i in (1, 2, 3, 4, 5)]
                 + [{"question_id": 20000001 + i, "category": "popular"} for i in range(2)]
                 + [{"question_id": 40000001 + i, "category": "random"} for i in range(2)])
    # answers interleave the splits; within a split they keep file order
    answers = [
        {"question_id": 1, "text": "Yes"}, {"question_id": 20000001, "text": "No"},
        {"question_id": 2, "text": "No"}, {"question_id": 3, "text": "no"},
        {"question_id": 40000001, "text": "yes"}, {"question_id": 20000002, "text": "No"},
        {"question_id": 4, "text": "Yes"}, {"question_id": 5, "text": "Yes"},
        {"question_id": 40000002, "text": "yes"},
    ]
    labels = {"adversarial": ["yes", "yes", "no", "no", "yes"],
              "popular": ["no", "no"],
              "random": ["yes", "no", "yes"]}  # one label more than answers: zip drops it
    res = score_pope(answers, questions, labels)
    # adversarial: as test_split_metrics_by_hand -> F1 2/3
    assert res["splits"]["adversarial"]["f1"] == pytest.approx(200 / 3)
    # popular: never yes -> F1 0 (guarded), accuracy 100
    assert res["splits"]["popular"]["f1"] == 0.0
    assert res["splits"]["popular"]["accuracy"] == 100.0
    # random: preds [1,1] vs labels [1,0] -> TP 1, FP 1: P 1/2, R 1, F1 = 2*(1/2)/(3/2) = 2/3
    assert res["splits"]["random"]["f1"] == pytest.approx(200 / 3)
    assert res["splits"]["random"]["yes_ratio"] == 100.0
    # headline: mean F1 = (2/3 + 0 + 2/3) / 3 = 4/9
    assert res["mean_f1"] == pytest.approx(400 / 9)
    assert res["warnings"] and "random" in res["warnings"][0]


def test_score_pope_unknown_question():
    with pytest.raises(ScorerInputError, match="not in the POPE question file"):
        score_pope([{"question_id": 7, "text": "yes"}], [{"question_id": 1, "category": "random"}],
                   {"random": ["yes"]})


def test_pope_labels_are_json_lines(tmp_path):
    (tmp_path / "coco_pope_random.json").write_text('{"label": "yes"}\n{"label": "no"}\n')
    (tmp_path / "notes.txt").write_text("ignored")
    assert load_labels(tmp_path) == {"random": ["yes", "no"]}


@pytest.mark.parametrize("pred, label", [
    ("yes\n", "yes"), ("no\n", "no"),
    ("yes, it is\n", "yes"),
    ("the answer is yes\n", "other"),   # only the first 4 characters are looked at
    ("eyes\n", "yes"),                  # "yes" inside the first 4
    ("know\n", "no"),                   # "no" inside the first 4
    ("not sure\n", "no"),
    ("\n", "other"),
])
def test_mme_parse_prediction(pred, label):
    assert mme.parse_prediction(pred) == label


def _write_gt(root):
    b = root / "MME_Benchmark_release_version"
    (b / "existence").mkdir(parents=True)
    (b / "existence" / "0001.txt").write_text(
        "Is there a cat in this image? Please answer yes or no.\tYes\n"
        "Is there a dog in this image? Please answer yes or no.\tNo\n")
    (b / "existence" / "0002.txt").write_text(
        "Is there a car in this image? Please answer yes or no.\tYes\n"
        "Is there a bus in this image? Please answer yes or no.\tNo\n")
    # a subtask with images/ + questions_answers_YN/, and the two-space variant of the suffix
    (b / "artwork" / "images").mkdir(parents=True)
    (b / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (b / "artwork" / "questions_answers_YN" / "10.txt").write_text(
        "Is this by A?  Please answer yes or no.\tYes\nIs this by B?  Please answer yes or no.\tNo\n")
    (b / "code_reasoning").mkdir(parents=True)
    (b / "code_reasoning" / "0020.txt").write_text(
        "Is the output 2? Please answer yes or no.\tYes\nIs the output 3? Please answer yes or no.\tNo\n")
    return b


def _ans(qid, q, text):
    return {"question_id": qid, "prompt": q + "\nAnswer the question using a single word or phrase.", "text": text}


def test_mme_convert_and_calculate(tmp_path):
    gt = mme.load_ground_truth(_write_gt(tmp_path))
    answers = [
        # existence image 1: both right (the "No, ..." prefix is "no, ") -> acc+ hit
        _ans("existence/0001.jpg", "Is there a cat in this image?", "Yes"),
        _ans("existence/0001.jpg", "Is there a dog in this image?", "No, there is not."),
        # existence image 2: "I think yes" -> prefix "i th" -> other (wrong); "no" right
        _ans("existence/0002.jpg", "Is there a car in this image?", "I think yes"),
        _ans("existence/0002.jpg", "Is there a bus in this image?", "no"),
        # artwork: the prompt carries a trailing space before the suffix; one-space key is absent so the
        # two-space key is used. "yes" right; "yesno" -> prefix "yesn" has "yes" -> wrong
        _ans("artwork/images/10.jpg", "Is this by A? ", "yes"),
        _ans("artwork/images/10.jpg", "Is this by B? ", "yesno"),
        # code_reasoning (cognition): "Nope" -> no (wrong, gt yes); "Not sure" -> no (right)
        _ans("code_reasoning/0020.png", "Is the output 2?", "Nope"),
        _ans("code_reasoning/0020.png", "Is the output 3?", "Not sure"),
    ]
    rows = mme.convert_answers(answers, gt)
    assert rows["artwork"][0] == ("10.txt", "Is this by A?  Please answer yes or no.", "Yes", "yes")
    m = mme.score_mme(rows)
    # existence: 3 of 4 right -> acc 75; 1 of 2 images both right -> acc+ 50; score 125
    assert m["subtasks"]["existence"]["acc"] == pytest.approx(75.0)
    assert m["subtasks"]["existence"]["acc_plus"] == pytest.approx(50.0)
    assert m["subtasks"]["existence"]["score"] == pytest.approx(125.0)
    assert m["subtasks"]["existence"]["other_num"] == 1
    # artwork: acc 50, acc+ 0 -> 50; code_reasoning: acc 50, acc+ 0 -> 50
    assert m["subtasks"]["artwork"]["score"] == pytest.approx(50.0)
    # perception = existence + artwork = 175; cognition = code_reasoning = 50
    assert m["perception"] == pytest.approx(175.0)
    assert m["cognition"] == pytest.approx(50.0)
    assert "count" in m["missing_subtasks"]
    # the official tool's input files, "file<TAB>question<TAB>gt<TAB>pred"
    out = mme.write_eval_tool_files(rows, tmp_path / "tool")
    assert (tmp_path / "tool" / "existence.txt").read_text().splitlines()[2] == (
        "0002.txt\tIs there a car in this image? Please answer yes or no.\tYes\tI think yes")
    assert len(out) == 3


def test_mme_pairs_are_the_two_answers_of_one_image(tmp_path):
    gt = mme.load_ground_truth(_write_gt(tmp_path))
    # the images' questions interleaved (a resumed run): upstream pairs by position, (img1 q1, img2 q1) and
    # (img1 q2, img2 q2), and would count acc+ 1/2; the pairs are the images' own questions
    answers = [
        _ans("existence/0001.jpg", "Is there a cat in this image?", "Yes"),   # right
        _ans("existence/0002.jpg", "Is there a car in this image?", "Yes"),   # right
        _ans("existence/0001.jpg", "Is there a dog in this image?", "Yes"),   # wrong
        _ans("existence/0002.jpg", "Is there a bus in this image?", "Yes"),   # wrong
    ]
    rows = mme.convert_answers(answers, gt)
    assert [r[0] for r in rows["existence"]] == ["0001.txt", "0001.txt", "0002.txt", "0002.txt"]
    m = mme.score_mme(rows)["subtasks"]["existence"]
    assert (m["acc"], m["acc_plus"]) == (50.0, 0.0)


def test_mme_errors(tmp_path):
    gt = mme.load_ground_truth(_write_gt(tmp_path))
    with pytest.raises(ScorerInputError, match="pairs"):
        mme.score_mme(mme.convert_answers([_ans("existence/0001.jpg", "Is there a cat in this image?", "Yes")], gt))
    with pytest.raises(ScorerInputError, match="answered twice"):
        mme.convert_answers([_ans("existence/0001.jpg", "Is there a cat in this image?", "Yes")] * 2, gt)
    with pytest.raises(ScorerInputError, match="no MME ground truth"):
        mme.convert_answers([_ans("existence/0001.jpg", "Is there a horse in this image?", "Yes")], gt)
