"""GQA, MMBench (circular), SEED-Bench, MM-Vet and the xlsx writer. Worked by hand."""

import zipfile

import pytest

from llava.eval.benchmarks import gqa, mmbench, open_ended, seed
from llava.eval.benchmarks.common import ScorerInputError
from llava.eval.benchmarks.xlsx import write_xlsx


def test_gqa_convert_and_score():
    def q(answer, structural, balanced=True):
        return {"answer": answer, "isBalanced": balanced, "types": {"structural": structural, "semantic": "attr"}}
    questions = {"1": q("red", "query"), "2": q("yes", "verify"), "3": q("circle", "query"),
                 "4": q("no", "logical"), "5": q("x", "query", balanced=False), "6": q("yes", "choose"),
                 "7": q("table", "query")}
    answers = [
        {"question_id": "1", "text": "Red."},      # "red": right
        {"question_id": "2", "text": "Yes"},       # "yes": right
        {"question_id": "3", "text": "circle."},   # right
        # "4" missing: wrong
        {"question_id": "5", "text": "x"},         # not balanced: ignored
        {"question_id": "6", "text": "Yes.."},     # rstrip('.') removes every trailing dot: right
        {"question_id": "7", "text": "The table"},  # no other normalisation: "the table" != "table"
    ]
    preds = gqa.convert_for_eval(answers)
    assert preds[0] == {"questionId": "1", "prediction": "red"}
    m = gqa.score_gqa(questions, preds)
    # balanced: 1 2 3 4 6 7 -> right 1 2 3 6 = 4/6
    assert m["accuracy"] == pytest.approx(400 / 6)
    # open (structural "query"): 1 3 7 -> 2/3; binary: 2 4 6 -> 2/3
    assert m["open"] == pytest.approx(200 / 3)
    assert m["binary"] == pytest.approx(200 / 3)
    assert m["num_missing"] == 1 and m["count"] == 6


def _mmbench_rows():
    def row(index, answer, options, category="cat"):
        r = {"index": str(index), "question": "q", "hint": "", "answer": answer, "category": category,
             "image": "", "source": "s", "l2-category": "l2", "comment": "", "split": "dev"}
        r.update({c: (options[i] if i < len(options) else "") for i, c in enumerate("ABCD")})
        return r
    return [row(0, "A", ["red", "blue", "green", "yellow"]),
            row(1, "B", ["one", "two", "three"]),
            row(2, "A", ["triangle", "square"]),
            # circular copy of 0: options rotated by one, the answer moves with "red" to D
            row(1000000, "D", ["blue", "green", "yellow", "red"])]


def test_mmbench_options_and_matching():
    assert mmbench.row_options({"A": "x", "B": "y", "C": "nan", "D": "z"}) == ["x", "y"]  # stop at first missing
    cands = {"A": "triangle", "B": "square"}
    assert mmbench.match_option("B", cands) == "B"
    assert mmbench.match_option("(B) square", cands) == "B"
    assert mmbench.match_option("The answer is B.", cands) == "B"
    assert mmbench.match_option("It is a triangle", cands) == "A"  # no letter token -> option text
    assert mmbench.match_option("A or B", cands) is None            # two letters
    assert mmbench.match_option("I cannot tell", cands) is None


def test_mmbench_circular_with_tsv_copies():
    answers = [
        {"question_id": 0, "text": "A"},                   # right
        {"question_id": 1000000, "text": "D. red"},        # right -> group 0 right
        {"question_id": 1, "text": "The answer is C"},     # C != B: wrong
        {"question_id": 2, "text": "triangle"},            # option text -> A: right
    ]
    m = mmbench.score_mmbench(answers, _mmbench_rows())
    # attempts 3/4 right; groups {0: both right, 1: wrong, 2: right} -> 2/3
    assert m["single_accuracy"] == pytest.approx(75.0)
    assert m["circular_accuracy"] == pytest.approx(200 / 3)
    assert m["num_groups"] == 3


def test_mmbench_circular_with_rounds():
    rows = _mmbench_rows()
    answers = [  # LLaVA --all-rounds on index 1 (answer B = "two"); option_char maps displayed -> original
        {"question_id": 1, "round_id": 0, "text": "B", "options": ["one", "two", "three"],
         "option_char": ["A", "B", "C"]},   # displayed B -> original B: right
        {"question_id": 1, "round_id": 1, "text": "A", "options": ["two", "three", "one"],
         "option_char": ["B", "C", "A"]},   # displayed A -> original B: right
        {"question_id": 1, "round_id": 2, "text": "A", "options": ["three", "one", "two"],
         "option_char": ["C", "A", "B"]},   # displayed A -> original C: wrong
    ]
    m = mmbench.score_mmbench(answers, rows)
    # 2 of 3 attempts right; the one group is wrong
    assert m["single_accuracy"] == pytest.approx(200 / 3)
    assert m["circular_accuracy"] == 0.0
    assert m["num_questions_unanswered"] == 2  # groups 0 and 2 have no answers


def test_mmbench_no_answers_column_and_unknown_index():
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in _mmbench_rows()]
    assert mmbench.score_mmbench([{"question_id": 0, "text": "A"}], rows) is None
    with pytest.raises(ScorerInputError, match="not in the MMBench tsv"):
        mmbench.score_mmbench([{"question_id": 7, "text": "A"}], _mmbench_rows())


def test_mmbench_upload_table_and_xlsx(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    # --all-rounds: one answer per round; the later round's text is uploaded, as upstream
    answers = [{"question_id": 0, "round_id": 0, "text": "B"}, {"question_id": 0, "round_id": 1, "text": "A"}]
    h, rows = mmbench.upload_table(header, _mmbench_rows(), answers)
    # dropped: hint category image source l2-category comment; prediction inserted at position 6
    assert h == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert rows[0] == [0, "q", "red", "blue", "green", "yellow", "A", "A", "dev"]
    assert rows[1][6] is None and rows[1][5] is None  # no answer; missing option D left empty
    path = write_xlsx(tmp_path / "up.xlsx", h, rows)
    with zipfile.ZipFile(path) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
        assert "xl/workbook.xml" in z.namelist()
    assert '<c r="G1" t="inlineStr"><is><t>prediction</t></is></c>' in sheet
    assert '<c r="A2"><v>0</v></c>' in sheet
    # row 3 (index 1): option D (column F) and prediction (column G) are empty cells, not written
    assert 'r="F3"' not in sheet and 'r="G3"' not in sheet and 'r="E3"' in sheet


def test_seed_exact_match():
    annotation = {"question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
                  "questions": [
                      {"question_id": "1", "answer": "A", "question_type_id": 1, "data_type": "image"},
                      {"question_id": "2", "answer": "B", "question_type_id": 1, "data_type": "image"},
                      {"question_id": "3", "answer": "C", "question_type_id": 2, "data_type": "image"},
                      {"question_id": "4", "answer": "D", "question_type_id": 10, "data_type": "video"}]}
    answers = [{"question_id": 1, "text": "A"},   # right (int id joins the string id)
               {"question_id": 2, "text": "B."},  # exact match only: wrong
               {"question_id": 3, "text": "C"}]   # right; 4 missing: wrong
    m = seed.score_seed(answers, annotation)
    # image 2/3, video 0/1, total 2/4
    assert m["accuracy_image"] == pytest.approx(200 / 3)
    assert m["accuracy_video"] == 0.0
    assert m["accuracy_total"] == 50.0
    # per type: 1 -> 1/2, 2 -> 1/1, 10 -> 0/1
    assert m["per_type"] == {"Scene Understanding": 50.0, "Instance Identity": 100.0, "Action Recognition": 0.0}
    assert seed.upload_lines(answers, annotation)[3] == {"question_id": "4", "prediction": ""}


def test_mmvet_and_llavabench_files():
    answers = [{"question_id": 0, "text": "red"}, {"question_id": 5, "text": "two"}]
    assert open_ended.mmvet_results(answers) == {"v1_0": "red", "v1_5": "two"}
    rows = open_ended.llavabench_review_inputs(
        answers, [{"question_id": 0, "image": "001.jpg", "text": "q0", "category": "conv"},
                  {"question_id": 1, "image": "001.jpg", "text": "q1", "category": "detail"}],
        [{"image": "001.jpg", "caption": "cap"}], [{"question_id": 0, "text": "ref0"}])
    assert rows[0] == {"question_id": 0, "category": "conv", "image": "001.jpg", "question": "q0",
                       "context": "cap", "reference": "ref0", "answer": "red"}
    assert rows[1]["answer"] is None
