"""VQA answer normalisation (EvalAI / m4c answer processor) and the 10-annotator soft accuracy.

Used by TextVQA (local score), VQAv2 and VizWiz (submission files, optional local score).
Re-implemented from the specification (evaluation.md §2.4); the order of the steps and their quirks
are kept because published numbers depend on them:

1. ``word_tokenize``: lower-case, delete ``,`` and ``?``, ``'s`` -> `` 's``, strip.
2. ``\\n`` and ``\\t`` -> space, strip.
3. punctuation: each listed mark is deleted when it touches a space in the step's *input*
   (otherwise it becomes a space); then periods not followed by a digit are deleted, at most 32 of
   them (upstream passes ``re.UNICODE`` (= 32) as the ``count`` argument of ``re.sub``).
4. words: number words -> digits, articles dropped, contractions table applied (keys with capitals,
   e.g. ``Im``, can never match the lower-cased text), joined by single spaces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The standard VQA contractions table (data, restated from the VQA evaluation).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
# "(?!<=\d)" is a typo for a look-behind in the original; as written it is a look-ahead that never
# blocks a ".", so in effect: a period not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # == 32: what the original passes as re.sub's count


def _word_tokenize(text: str) -> str:
    text = text.lower()
    text = text.replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip()


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    comma_between_digits = _COMMA_STRIP.search(in_text) is not None  # never true after step 1
    for p in PUNCTUATION:
        if (p + " " in in_text or " " + p in in_text) or comma_between_digits:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _PERIOD_STRIP.sub("", out_text, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(in_text: str) -> str:
    words = []
    for word in in_text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The EvalAI / m4c answer processor: applied to predictions and to every ground-truth answer."""
    text = _word_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    return _process_digit_article(text)


def soft_scores(gt_answers: Sequence[str], *, expect: int | None = 10) -> dict[str, float]:
    """Leave-one-out VQA accuracy of every unique normalised ground-truth answer.

    ``acc(u) = mean_i min(1, #{j != i : gt_j == u} / 3)`` over the annotators ``i``.
    ``expect``: the number of answers the original asserts (10); ``None`` accepts any number.
    """
    answers = [normalize_answer(a) for a in gt_answers]
    if expect is not None and len(answers) != expect:
        raise ValueError(f"expected {expect} ground-truth answers, got {len(answers)}")
    n = len(answers)
    scores = {}
    for unique in set(answers):
        total = 0.0
        k = answers.count(unique)
        for i in range(n):
            matches = k - (1 if answers[i] == unique else 0)
            total += min(1.0, matches / 3)
        scores[unique] = total / n if n else 0.0
    return scores


def vqa_accuracy(pred: str, gt_answers: Sequence[str], *, expect: int | None = 10) -> float:
    """Soft accuracy (0..1) of one prediction against its annotators' answers."""
    return soft_scores(gt_answers, expect=expect).get(normalize_answer(pred), 0.0)
