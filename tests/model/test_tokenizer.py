"""The original layouts tokenize exactly as LLaVA's slow SentencePiece ``LlamaTokenizer`` (issue 11 item 1).

The reference is ``sentencepiece.SentencePieceProcessor`` on the checkpoint's ``tokenizer.model``: with LLaMA's
``legacy=False`` handling a chunk of text without special tokens is ``[BOS] + sp.encode(chunk)``, and decoding is
``sp.decode``. The tiny checkpoints' model is a SentencePiece BPE trained offline whose whitespace-only pieces
score lowest, as LLaMA's do: the case where transformers 5.23's own rebuild from ``tokenizer.model`` goes wrong.
"""

import os
import random

import pytest
import sentencepiece

from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_tokenizer
from llava.model.sentencepiece_tokenizer import LlamaSentencePieceTokenizer, fast_tokenizer_from_sentencepiece

PROMPTS = [
    "What is  this?",
    "two  spaces, three   spaces and sixteen                spaces",
    "a\ttab, two\t\ttabs and\t \tmixed",
    "def answer(x):\n    if x:\n        return  'yes'\n\treturn 'no'\n",
    "  leading spaces",
    " one leading space",
    "trailing spaces   ",
    "这是什么？ 图片里有一只猫。  两个空格",
    "日本語のテキスト and English 한국어",
    "\n",
    "   ",
    "\nWhat is the color of the car?\nAnswer the question using a single word or phrase.",
    "Question: 2 + 2 =  4?   Options: A.  yes  B. no",
]


def _reference_ids(sp, text: str) -> list[int]:
    return [sp.bos_id()] + sp.encode(text)


def _random_texts(n: int, seed: int = 0) -> list[str]:
    alphabet = list("ab th e?:.\n\t   这是的猫") + ["ing", "the", "  ", "\n    "]
    rnd = random.Random(seed)
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24))) for _ in range(300)]


@pytest.fixture(scope="module")
def sp(tiny_original):
    return sentencepiece.SentencePieceProcessor(model_file=os.path.join(tiny_original, "tokenizer.model"))


def test_tiny_model_scores_whitespace_pieces_lowest_as_llama(sp, tiny_original):
    """The test model has LLaMA's trap: whitespace-only pieces with low ids but the lowest scores."""
    pieces = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    assert "▁▁▁▁" in pieces and pieces["▁▁"] < 270  # among the first merges after the byte pieces, as in LLaMA
    later_and_better = [i for i in range(pieces["▁▁"] + 1, sp.get_piece_size()) if sp.get_score(i) > -1e8]
    assert len(later_and_better) > 100  # so piece-id order is not score order
    lowest = min(sp.get_score(i) for i in range(sp.get_piece_size()) if not sp.is_byte(i) and not sp.is_control(i))
    assert sp.get_score(pieces["▁▁"]) == lowest == sp.get_score(pieces["▁▁▁▁"])
    assert sp.id_to_piece(13) == "<0x0A>"  # a newline is a byte piece, as in LLaMA
    assert not os.path.exists(os.path.join(tiny_original, "tokenizer.json"))  # as the released checkpoints


def test_transformers_rebuild_from_tokenizer_model_differs(sp, tiny_original):
    """What the loader did before: transformers 5.23's fast rebuild ignores the scores and merges ``▁▁`` first."""
    from transformers import AutoTokenizer, LlamaConfig

    rebuilt = AutoTokenizer.from_pretrained(tiny_original, config=LlamaConfig())
    wrong = [text for text in PROMPTS if rebuilt(text).input_ids != _reference_ids(sp, text)]
    assert len(wrong) >= 4, wrong  # every prompt with a run of spaces


def test_original_layout_tokenizer_equals_sentencepiece(sp, tiny_original):
    tok = load_tokenizer(tiny_original)
    assert isinstance(tok, LlamaSentencePieceTokenizer) and tok.legacy is False
    for text in PROMPTS + _random_texts(300):
        assert tok(text).input_ids == _reference_ids(sp, text), repr(text)
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text), repr(text)


def test_original_layout_decodes_as_sentencepiece(sp, tiny_original):
    tok = load_tokenizer(tiny_original)
    for text in PROMPTS + _random_texts(100, seed=1):
        ids = _reference_ids(sp, text) + [sp.eos_id()]
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids), repr(text)
        assert tok.decode(ids, skip_special_tokens=True).strip() == text.strip()
    rnd = random.Random(2)  # generated-like ids: any ordinary or byte piece (invalid UTF-8 included), then EOS
    for _ in range(200):
        ids = [rnd.randrange(3, sp.get_piece_size()) for _ in range(rnd.randint(1, 12))] + [sp.eos_id()]
        assert tok.batch_decode([ids], skip_special_tokens=True)[0] == sp.decode(ids), ids
    assert tok.decode([1, 300, 2]) == "<s>" + sp.decode([300]) + "</s>"


def test_llava_prompt_ids_equal_chunkwise_sentencepiece(sp, tiny_original):
    """Whole prompts through ``tokenizer_image_token``: each chunk as SentencePiece, later BOS dropped."""
    tok = load_tokenizer(tiny_original)
    for question in PROMPTS:
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        before, after = prompt.split("<image>")
        expected = _reference_ids(sp, before) + [-200] * 5 + sp.encode(after)
        assert tokenizer_image_token(prompt, tok, -200, 5) == expected, repr(question)
    # the whitespace around the image as LLaVA has it: "... USER:" "▁" [image] "▁" "<0x0A>" ...
    assert tok.convert_ids_to_tokens(expected[expected.index(-200) - 1 : expected.index(-200)]) == ["▁"]
    assert tok.convert_ids_to_tokens(expected[expected.index(-200) + 5 : expected.index(-200) + 7]) == ["▁", "<0x0A>"]


def test_both_tiny_layouts_tokenize_llava_prompts_alike(tiny_hf, tiny_original):
    original, hf = load_tokenizer(tiny_original), load_tokenizer(tiny_hf)
    for question in PROMPTS[:4] + PROMPTS[6:]:
        for template in ("vicuna_v1", "llava_v1"):
            conv = conv_templates[template].copy()
            conv.append_message(conv.roles[0], "<image>\n" + question)
            conv.append_message(conv.roles[1], None)
            prompt = conv.get_prompt()
            assert tokenizer_image_token(prompt, original, 448, 7) == tokenizer_image_token(prompt, hf, 448, 7)


def test_fast_tokenizer_with_merges_by_score_equals_sentencepiece(sp, tiny_original):
    """The llava-hf style fast tokenizer (tiny hf layout, ``convert``): exact except for text that starts with a
    space, to which a fast Metaspace pre-tokenizer adds no prefix."""
    fast = fast_tokenizer_from_sentencepiece(os.path.join(tiny_original, "tokenizer.model"), add_bos_token=True)
    for text in [t for t in PROMPTS + _random_texts(300, seed=3) if not t.startswith(" ")]:
        assert fast(text).input_ids == _reference_ids(sp, text), repr(text)


def test_legacy_flag_of_the_checkpoint_is_honoured(tiny_original, tmp_path):
    """``legacy`` absent means ``True`` (transformers 4.x): SentencePiece's dummy prefix after a special token."""
    import json
    import shutil

    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in ("tokenizer.model", "special_tokens_map.json"):
        shutil.copy(os.path.join(tiny_original, name), folder / name)
    with open(os.path.join(tiny_original, "tokenizer_config.json")) as f:
        settings = json.load(f)
    settings.pop("legacy")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    legacy, current = load_tokenizer(str(folder)), load_tokenizer(tiny_original)
    assert legacy.legacy is True
    def after_eos(tok):
        tokens = tok.tokenize("yes</s>no")
        return tokens[tokens.index("</s>") + 1]

    assert not after_eos(current).startswith("▁")  # legacy=False: no prefix after a special token
    assert after_eos(legacy).startswith("▁")  # legacy=True: SentencePiece's dummy prefix there too
    assert legacy("What is  this?").input_ids == current("What is  this?").input_ids  # chunks: no difference
