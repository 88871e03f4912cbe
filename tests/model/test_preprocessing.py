import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.mm_utils import (
    BadInputError,
    build_image_processor,
    expand2square,
    load_image,
    tokenizer_image_token,
)


def _reference_pixels(img: Image.Image) -> torch.Tensor:
    """LLaVA's 'pad' path written out by hand: expand2square, bicubic shortest-edge resize, centre crop,
    rescale, normalise (evaluation.md 4.3)."""
    fill = tuple(int(m * 255) for m in OPENAI_CLIP_MEAN)
    square = expand2square(img, fill)
    square = square.resize((336, 336), Image.BICUBIC)
    arr = np.asarray(square, dtype=np.float32) / 255.0
    arr = (arr - np.array(OPENAI_CLIP_MEAN, dtype=np.float32)) / np.array(OPENAI_CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)


@pytest.mark.parametrize("size", [(500, 333), (301, 640), (336, 336), (700, 700)])
def test_pad_preprocessing_matches_expand2square_reference(size):
    rng = np.random.default_rng(size[0])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pixels = build_image_processor()(images=img, return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, 336, 336)
    assert torch.allclose(pixels, _reference_pixels(img), atol=1e-5)


def test_expand2square_fill_colour_and_offset():
    img = Image.new("RGB", (10, 4), (255, 255, 255))
    sq = expand2square(img, (122, 116, 104))
    assert sq.size == (10, 10)
    assert sq.getpixel((0, 0)) == (122, 116, 104)  # padding row above
    assert sq.getpixel((0, 3)) == (255, 255, 255)  # offset (10 - 4) // 2 = 3
    assert sq.getpixel((0, 6)) == (255, 255, 255)
    assert sq.getpixel((0, 7)) == (122, 116, 104)
    assert (122, 116, 104) == tuple(int(m * 255) for m in OPENAI_CLIP_MEAN)


def test_padded_border_normalises_to_near_zero():
    img = Image.new("RGB", (336, 100), (0, 0, 0))
    pixels = build_image_processor()(images=img, return_tensors="pt")["pixel_values"][0]
    # the mean colour (rounded down to integers) normalises to just below 0
    assert pixels[:, 0, :].abs().max() < 0.02


def test_no_pad_crops_instead():
    img = Image.new("RGB", (600, 300), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 50, 300))  # a white band on the far left is cropped away without pad
    no_pad = build_image_processor(do_pad=False)(images=img, return_tensors="pt")["pixel_values"][0]
    pad = build_image_processor(do_pad=True)(images=img, return_tensors="pt")["pixel_values"][0]
    assert no_pad[:, :, :5].max() < 0 < pad[:, 100:200, :5].max()


def test_tokenizer_image_token_splits_chunks_and_drops_inner_bos(tiny_hf):
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    prompt = "A chat. USER: <image>\nIs it red? ASSISTANT:"
    ids = tokenizer_image_token(prompt, tok, image_token_id=999, num_image_tokens=5)
    first = tok("A chat. USER: ").input_ids
    second = tok("\nIs it red? ASSISTANT:").input_ids
    assert first[0] == tok.bos_token_id and second[0] == tok.bos_token_id
    assert ids == first + [999] * 5 + second[1:]
    # the whitespace token of a fresh chunk, then the newline byte, as the original tokenisation gives
    assert tok.convert_ids_to_tokens(second[1:3]) == ["▁", "<0x0A>"]


def test_tokenizer_image_token_counts_must_match(tiny_hf):
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    with pytest.raises(ValueError, match="1 <image> placeholders but 2"):
        tokenizer_image_token("a <image> b", tok, 7, [3, 4])
    assert tokenizer_image_token("no image", tok, 7, []) == tok("no image").input_ids


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(BadInputError, match="image not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="cannot read image .*bad.jpg"):
        load_image(bad)
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(BadInputError, match="truncated.png"):
        load_image(truncated)
