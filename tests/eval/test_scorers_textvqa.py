"""EvalAI answer normalisation, the 10-annotator soft accuracy, TextVQA, VQAv2 and VizWiz scorers.
Every expected number is worked out by hand in the comments."""

import pytest

from llava.eval.benchmarks import vizwiz, vqav2
from llava.eval.benchmarks.common import ScorerInputError
from llava.eval.benchmarks.textvqa import prompt_question, score_textvqa
from llava.eval.benchmarks.vqa_eval import normalize_answer, soft_scores, vqa_accuracy

SUFFIX = "\nAnswer the question using a single word or phrase."


def ten(*pairs):
    out = [a for a, k in pairs for _ in range(k)]
    assert len(out) == 10
    return out


@pytest.mark.parametrize("raw, expected", [
    # lower-case; "!" touches no space -> becomes " "; article "the" dropped
    ("The Answer!", "answer"),
    # a "." not followed by a digit is deleted; number word -> digit
    ("Two dogs.", "2 dogs"),
    ("Ten", "10"),
    ("none", "0"),
    # a "." followed by a digit stays
    ("3.5", "3.5"),
    # "," and "?" are deleted in step 1
    ("yes, it is?", "yes it is"),
    # "-" touches no space -> " "; so both spellings normalise alike
    ("Coca-Cola", "coca cola"),
    # " -" occurs in the input -> "-" is deleted (not spaced): "x  y" -> split/join -> "x y"
    ("x - y", "x y"),
    # "(" and ")" touch no space -> spaces, then whitespace collapses
    ("(hello)", "hello"),
    # contractions table, after lower-casing
    ("Dont", "don't"),
    ("whats", "what's"),
    ("yall", "y'all"),
    # keys with capitals ("Im") can never match lower-cased text
    ("Im", "im"),
    # "'s" -> " 's"
    ("man's hat", "man 's hat"),
    # newline / tab -> space
    ("yes\nno", "yes no"),
    ("a\tcat", "cat"),
    # only 32 periods are removed (re.UNICODE passed as count): 40 - 32 = 8 remain
    ("." * 40, "." * 8),
    # all articles dropped
    ("a an the", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_soft_accuracy_leave_one_out():
    gts = ten(("stop", 9), ("stop sign", 1))
    # "stop": k = 9. The 9 annotators saying "stop" leave 8 matches -> min(1, 8/3) = 1;
    # the other leaves 9 -> 1. Mean 1.0.
    assert vqa_accuracy("Stop.", gts) == pytest.approx(1.0)
    # "stop sign": k = 1. Its own annotator leaves 0 -> 0; the 9 others leave 1 -> 1/3. 9/3 / 10 = 0.3.
    assert vqa_accuracy("stop sign", gts) == pytest.approx(0.3)
    # k = 2: 8 annotators see 2 -> 2/3, 2 see 1 -> 1/3: (8*2/3 + 2*1/3) / 10 = 0.6
    assert vqa_accuracy("red", ten(("red", 2), ("maroon", 8))) == pytest.approx(0.6)
    # k = 3: (7*1 + 3*2/3) / 10 = 0.9
    assert vqa_accuracy("red", ten(("red", 3), ("maroon", 7))) == pytest.approx(0.9)
    # not among the ground truths -> 0
    assert vqa_accuracy("blue", gts) == 0.0
    # the upstream scorer asserts 10 answers
    with pytest.raises(ValueError):
        soft_scores(["a"] * 9)


def test_prompt_question_formats():
    three = "What does the sign say?\nReference OCR token: STOP, ahead" + SUFFIX
    assert prompt_question(three) == "what does the sign say?"
    ocr_first = "Reference OCR token: STOP\nWhat is it?" + SUFFIX
    assert prompt_question(ocr_first) == "what is it?"
    assert prompt_question("Which brand?" + SUFFIX) == "which brand?"
    assert prompt_question("OCR tokens: a b Question: What is it? Short answer:") == "what is it?"
    with pytest.raises(ValueError):
        prompt_question("one line only")
    with pytest.raises(ValueError):
        prompt_question("a\nb\nc\nd")


def _textvqa_annotation():
    return {"data": [
        {"image_id": "img1", "question": "What does the sign say?", "answers": ten(("stop", 9), ("stop sign", 1))},
        {"image_id": "img1", "question": "what color is the sign?", "answers": ten(("red", 2), ("maroon", 8))},
        {"image_id": "img2", "question": "what brand?",
         "answers": ten(("coca-cola", 4), ("coca cola", 4), ("coke", 2))},
        {"image_id": "img3", "question": "how many shapes are there?", "answers": ten(("2", 7), ("two", 3))},
    ]}


def test_textvqa_scorer():
    answers = [
        # same image, two questions: the prompt picks the annotation. "Stop." -> "stop": 1.0
        {"question_id": "img1", "prompt": "what does the sign say?\nReference OCR token: STOP, ahead" + SUFFIX,
         "text": "Stop."},
        # k = 2 -> 0.6
        {"question_id": "img1", "prompt": "what color is the sign?\nReference OCR token: STOP" + SUFFIX,
         "text": "Red"},
        # two-line prompt; "coke": k = 2 -> 0.6 ("coca-cola" and "coca cola" both normalise to "coca cola")
        {"question_id": "img2", "prompt": "what brand?" + SUFFIX, "text": "coke"},
        # OCR line first -> question on line 1; "two" -> "2", all ten GT normalise to "2": 1.0
        {"question_id": "img3", "prompt": "Reference OCR token: 2\nhow many shapes are there?" + SUFFIX,
         "text": "two"},
    ]
    m = score_textvqa(answers, _textvqa_annotation())
    # (1 + 0.6 + 0.6 + 1) / 4 = 0.8
    assert m["accuracy"] == pytest.approx(80.0)
    assert m["num_scored"] == 4


def test_textvqa_errors():
    bad_prompt = [{"question_id": "img1", "prompt": "a\nb\nc\nd", "text": "x"}]
    with pytest.raises(ScorerInputError, match="4-line prompt"):
        score_textvqa(bad_prompt, _textvqa_annotation())
    unknown = [{"question_id": "img9", "prompt": "what?" + SUFFIX, "text": "x"}]
    with pytest.raises(ScorerInputError, match="no annotation"):
        score_textvqa(unknown, _textvqa_annotation())


def test_vqav2_upload_and_local_accuracy():
    test_list = [{"question_id": 1}, {"question_id": 2}, {"question_id": 3}]
    answers = [{"question_id": 1, "text": "Two."}, {"question_id": 2, "text": "Yes"}]
    # normalised answers; question 3 has none -> ""
    assert vqav2.upload_answers(answers, test_list) == [
        {"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "yes"}, {"question_id": 3, "answer": ""}]
    gt = vqav2.annotation_answers({"annotations": [
        {"question_id": 1, "answers": [{"answer": "2"}] * 10},
        {"question_id": 2, "answers": [{"answer": "no"}] * 8 + [{"answer": "yes"}] * 2},
    ]})
    # q1: 1.0; q2: "yes" with k = 2 -> 0.6; mean 0.8
    m = vqav2.local_accuracy(answers, gt)
    assert m["accuracy"] == pytest.approx(80.0) and m["num_scored"] == 2


def test_vizwiz_upload_and_local_accuracy():
    questions = [{"question_id": 0, "image": "VizWiz_test_00000000.jpg"},
                 {"question_id": 1, "image": "VizWiz_test_00000001.jpg"}]
    answers = [{"question_id": 1, "text": "Unanswerable"}, {"question_id": 0, "text": "The yellow one."}]
    # question-file order, keyed by image; "The yellow one." -> "yellow 1" (article dropped, number word mapped)
    assert vizwiz.upload_answers(answers, questions) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "yellow 1"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "unanswerable"}]
    with pytest.raises(ScorerInputError, match="1 of 2 VizWiz questions have no answer"):
        vizwiz.upload_answers(answers[:1], questions)
    gt = vizwiz.annotation_answers([
        {"image": "VizWiz_test_00000000.jpg", "answers": [{"answer": "yellow"}] * 10},
        {"image": "VizWiz_test_00000001.jpg", "answers": [{"answer": "unanswerable"}] * 7 + [{"answer": "x"}] * 3},
    ])
    # q0: "yellow 1" is not "yellow" -> 0; q1: k = 7 -> 1.0; mean 0.5
    assert vizwiz.local_accuracy(answers, questions, gt)["accuracy"] == pytest.approx(50.0)
