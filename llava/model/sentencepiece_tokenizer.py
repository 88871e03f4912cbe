"""LLaMA's SentencePiece tokenizer, exactly as LLaVA-1.5 and Video-LLaVA tokenize.

The original checkpoints (``liuhaotian/llava-v1.5-*``, ``LanguageBind/Video-LLaVA-7B``) ship only
``tokenizer.model`` and their code loads the slow ``LlamaTokenizer`` (``use_fast=False``): SentencePiece itself,
with the ``legacy`` handling of the checkpoint's ``tokenizer_config.json`` (``false`` for both). transformers 5.23
has no slow LLaMA tokenizer: it rebuilds a fast BPE from ``tokenizer.model`` with the merges in piece-id order,
ignoring the pieces' scores. LLaMA scores its whitespace-only pieces (``▁▁`` = 259, ``▁▁▁▁``, ...) lowest, so that
rebuild merges them first and every run of two or more spaces tokenizes differently (``"What is  this?"``:
``[1, 1724, 338, 29871, 445, 29973]`` in LLaVA, ``[1, 1724, 338, 259, 1366, 29973]`` rebuilt).

:class:`LlamaSentencePieceTokenizer` is the reference behaviour, run by the ``sentencepiece`` library:

* ``legacy=False`` (the released configs): the text gets one ``▁`` prefix (even when it starts with a space) and
  text after a special token gets none; SentencePiece's own dummy prefix is switched off.
* ``legacy=True``: SentencePiece's dummy prefix on every piece of text between special tokens.
* BOS / EOS as ``add_bos_token`` / ``add_eos_token`` say; decoding is SentencePiece's (byte fallback, the first
  piece's prefix space removed), special tokens verbatim unless skipped.

:func:`fast_tokenizer_from_sentencepiece` builds the llava-hf style fast tokenizer from the same file, with the
merges ordered by the pieces' scores (what the llava-hf ``tokenizer.json`` holds); it writes the hf layouts.
"""

from __future__ import annotations

import os

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

SPIECE_UNDERLINE = "▁"
TOKENIZER_MODEL = "tokenizer.model"


class LlamaSentencePieceTokenizer(SentencePieceBackend):
    """transformers 4.3x's slow ``LlamaTokenizer`` on the ``sentencepiece`` library (see the module docstring).

    Args:
        vocab_file: the ``tokenizer.model`` file.
        legacy: the checkpoint's ``legacy`` flag (``False`` for LLaVA-1.5 and Video-LLaVA).
        add_bos_token, add_eos_token: prepend BOS / append EOS when encoding with special tokens.
    """

    vocab_files_names = {"vocab_file": TOKENIZER_MODEL}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    def __init__(
        self,
        vocab_file: str,
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool = True,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        import sentencepiece

        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        # decoding uses the model as trained (dummy prefix on), so the first piece loses its prefix space as in
        # SentencePiece's own decode; encoding uses ``self.sp_model`` (dummy prefix off when legacy is False)
        self.sp_decoder = sentencepiece.SentencePieceProcessor(model_file=vocab_file)
        super().__init__(
            vocab_file=vocab_file,
            legacy=legacy,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    def tokenize(self, text: str, **kwargs) -> list[str]:
        if self.legacy or not text:
            return super().tokenize(text, **kwargs)
        tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]  # text that starts with a special token gets no prefix
        return tokens

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        ids = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            ids = ids + bos + token_ids_1 + eos
        return ids

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask = mask + bos + [0] * len(token_ids_1) + eos
        return mask

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """SentencePiece's decode of each run of ordinary pieces; special tokens verbatim between them."""
        specials = set(self.all_special_tokens) | set(self._added_tokens_encoder)
        out, run, first_run, previous_special = "", [], True, False
        for i, token in enumerate(tokens):
            if token in specials:
                if self.legacy and i > 0 and not previous_special:
                    out += " "  # transformers 4.x's legacy spacing before a special token
                out += self._decode_run(run, first_run) + token
                first_run = first_run and not run
                run, previous_special = [], True
            else:
                run.append(token)
                previous_special = False
        return out + self._decode_run(run, first_run)

    def _decode_run(self, pieces: list[str], first: bool) -> str:
        if not pieces:
            return ""
        # the first run of the text loses the prefix space of its first piece, later runs keep theirs
        return (self.sp_decoder if first else self.sp_model).decode_pieces(pieces)


def read_sentencepiece_proto(model_file: str):
    """The ``ModelProto`` of a ``tokenizer.model`` file."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


# SentencePiece piece types (sentencepiece_model.proto): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
# 6 byte
_MERGEABLE_TYPES = (1, 4)


def merges_by_score(proto) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a SentencePiece BPE model for a ``tokenizers`` BPE, the merges ranked as SentencePiece
    applies them: by the score of the merged piece, highest first (ties: longer left part first, then longer right
    part, as transformers 4.x's converter ordered them for the llava-hf ``tokenizer.json``)."""
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    ranked = []
    for piece in proto.pieces:
        if piece.type not in _MERGEABLE_TYPES:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                ranked.append((-piece.score, -len(left), -len(right), vocab[left], vocab[right], left, right))
    ranked.sort()
    return vocab, [(left, right) for *_, left, right in ranked]


def fast_tokenizer_from_sentencepiece(model_file: str, legacy: bool = False, **kwargs):
    """A transformers ``LlamaTokenizer`` (fast) from ``tokenizer.model`` with the merges ordered by score.

    It equals SentencePiece on text that does not start with a space (a fast Metaspace adds no prefix to text that
    already starts with one); the original layouts load :class:`LlamaSentencePieceTokenizer` instead.
    """
    from transformers import LlamaTokenizer

    vocab, merges = merges_by_score(read_sentencepiece_proto(model_file))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, **kwargs)
    return tok


def has_sentencepiece_only(folder: str) -> bool:
    """``folder`` holds ``tokenizer.model`` but no ``tokenizer.json`` (the original LLaVA / Video-LLaVA layout)."""
    return os.path.isfile(os.path.join(folder, TOKENIZER_MODEL)) and not os.path.isfile(
        os.path.join(folder, "tokenizer.json")
    )
