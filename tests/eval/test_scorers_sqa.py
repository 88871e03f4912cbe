"""ScienceQA: letter parsing and IMG accounting exactly as upstream. Expected values worked by hand."""

import pytest

from llava.eval.benchmarks.science_qa import FAILED, parse_letter, pred_index, score_science_qa


@pytest.mark.parametrize("text, letter", [
    ("B", "B"),                                  # exactly a letter
    ("E", "E"),
    ("B. the square", "B"),                      # "X. " prefix
    ("The answer is B.", "B"),                   # one "The answer is X." match
    ("The answer is Bx", "B"),                   # the regex's "." matches any character
    ("The answer is B", FAILED),                 # ... but needs one: nothing after the letter fails
    ("The answer is Z.", "Z"),                   # [A-Z]: parsed, later out of range
    ("The answer is A. The answer is B.", FAILED),  # two matches
    ("the answer is C.", FAILED),                # case-sensitive
    ("(B)", FAILED),
    ("B)", FAILED),
    (" B", FAILED),                              # no strip
    ("b", FAILED),
    ("F", FAILED),                               # only A-E count as a bare letter
    ("B.", FAILED),                              # "B." is 2 characters: neither rule applies
    ("", FAILED),
])
def test_parse_letter(text, letter):
    assert parse_letter(text) == letter


def test_pred_index_respects_number_of_choices():
    assert pred_index("B", 2) == 1
    assert pred_index("C", 2) == -1  # beyond the choices
    assert pred_index("Z", 5) == -1
    assert pred_index(FAILED, 4) == -1


def _problems():
    def prob(answer, n, image, hint, subject, grade):
        return {"question": "q", "choices": [f"c{i}" for i in range(n)], "answer": answer, "hint": hint,
                "image": "image.png" if image else None, "subject": subject, "grade": grade}
    return {
        "1": prob(1, 2, True, "", "natural science", "grade2"),
        "2": prob(0, 3, True, "a hint", "social science", "grade5"),
        "3": prob(0, 2, False, "", "language science", "grade3"),
        "4": prob(1, 4, False, "a hint", "natural science", "grade8"),
        "5": prob(2, 3, True, "", "natural science", "grade9"),
        "99": prob(0, 2, True, "", "natural science", "grade1"),  # not in the test split
    }


def test_score_science_qa():
    answers = [
        {"question_id": "1", "prompt": "<image>\nq\nA. c0\nB. c1", "text": "B"},                  # right
        {"question_id": "2", "prompt": "<image>\nContext: a hint\nq", "text": "The answer is B."},  # B != A: wrong
        {"question_id": "3", "prompt": "q\nA. c0\nB. c1", "text": "A. c0"},                     # right
        {"question_id": "4", "prompt": "Context: a hint\nq", "text": "(B)"},                    # FAILED: wrong
        # "5" has no answer: FAILED, prompt "Unknown" -> not counted as an image item
        {"question_id": "99", "prompt": "<image>\nq", "text": "A"},                           # not in the split
    ]
    res = score_science_qa(_problems(), ["1", "2", "3", "4", "5"], answers)
    # all: right = {1, 3} out of 5 -> 40 %
    assert (res.correct, res.count) == (2, 5)
    assert res.accuracy == pytest.approx(40.0)
    # IMG (prompt contains "<image>"): {1 right, 2 wrong} -> 50 %; problem 5 (an image problem with no
    # answer) is *not* in the IMG denominator, as upstream
    assert (res.img_correct, res.img_count) == (1, 2)
    assert res.img_accuracy == pytest.approx(50.0)
    assert res.num_missing == 1 and res.num_failed == 2  # "(B)" and the missing one
    # problems.json breakdown: IMG = {1 right, 2, 5} -> 1/3; TXT (hint) = {2, 4} -> 0; NO = {3} -> 100;
    # NAT = {1 right, 4, 5} -> 1/3; G7-12 = {4, 5} -> 0
    assert res.subsets["IMG"] == pytest.approx(100 / 3)
    assert res.subsets["TXT"] == 0.0
    assert res.subsets["NO"] == 100.0
    assert res.subsets["NAT"] == pytest.approx(100 / 3)
    assert res.subsets["G7-12"] == 0.0
    # upstream's output files
    assert res.result["results"] == {"1": 1, "2": 1, "3": 0, "4": -1, "5": -1}
    assert res.result["outputs"]["5"] == FAILED
    assert len(res.analyses["correct"]) == 2 and len(res.analyses["incorrect"]) == 3


def test_score_science_qa_no_image_items_guarded():
    # no image prompts at all: IMG accuracy is 0 instead of a division by zero
    res = score_science_qa(_problems(), ["3"], [{"question_id": "3", "prompt": "q", "text": "A"}])
    assert res.accuracy == 100.0 and res.img_count == 0 and res.img_accuracy == 0.0
