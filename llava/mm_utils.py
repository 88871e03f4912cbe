"""Image loading, LLaVA-1.5 preprocessing and prompt tokenisation (evaluation.md sections 4.2, 4.3)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from llava.constants import DEFAULT_IMAGE_TOKEN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


class BadInputError(ValueError):
    """An input item (image, question) that cannot be processed. The message names the item and the fix."""


def load_image(path: str | os.PathLike, convert_rgb: bool = True) -> Image.Image:
    """Open an image fully (so that truncated files fail here, not later).

    Raises:
        BadInputError: the file is missing, is not an image, is truncated, or is larger than PIL's
            decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(f"image not found: {path} (check --image-folder and the question's 'image' field)")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB") if convert_rgb else img.copy()
    except Image.DecompressionBombError as err:
        raise BadInputError(f"image {path} is too large to open safely ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BadInputError(f"cannot read image {path}: {err}") from None


def load_image_b64(data: str, what: str) -> Image.Image:
    """Decode an inline base64 image (MMBench's tsv); ``what`` names the item in errors."""
    import base64
    import binascii
    import io

    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as err:
        raise BadInputError(f"the base64 image of {what} is too large to open safely ({err})") from None
    except (binascii.Error, UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadInputError(f"cannot decode the base64 image of {what}: {err}") from None


def expand2square(img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Paste ``img`` centred on a square canvas of side max(w, h) filled with ``background_color``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), background_color)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def build_image_processor(
    image_size: int = 336,
    image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
    image_std: Sequence[float] = OPENAI_CLIP_STD,
    do_pad: bool = True,
):
    """LLaVA-1.5 preprocessing: pad to a square with the mean colour (``image_aspect_ratio = pad``),
    resize the shortest edge to ``image_size`` (bicubic, PIL), centre-crop, rescale, normalise.

    ``LlavaImageProcessorPil(do_pad=True)`` reproduces ``expand2square`` + ``CLIPImageProcessor``
    exactly (platform.md Q6; a test checks it against :func:`expand2square`).
    """
    from transformers import LlavaImageProcessorPil

    return LlavaImageProcessorPil(
        do_pad=do_pad,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
        resample=3,  # PIL bicubic
    )


def build_next_image_processor(
    image_size: int,
    image_grid_pinpoints: Sequence[Sequence[int]],
    image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
    image_std: Sequence[float] = OPENAI_CLIP_STD,
):
    """LLaVA-1.6 (anyres) preprocessing without torchvision: transformers' ``LlavaNextImageProcessorPil``.

    As LLaVA-1.6's ``process_anyres_image``: pick the grid from ``image_grid_pinpoints`` (``(height, width)``
    pairs), resize the image into it keeping its aspect ratio (bicubic, ``ceil`` of the scaled side), pad with black,
    cut ``image_size`` crops row by row, and put the whole image squashed to ``image_size`` x ``image_size`` first;
    every crop is then rescaled and normalised (the resize / centre crop of a crop already at ``image_size`` changes
    nothing). A test compares it with a hand-written reference of the original. ``pixel_values`` come back as
    ``[images, max crops, 3, H, W]`` (images with fewer crops are zero-padded; the model uses ``image_sizes`` to
    skip those).
    """
    from transformers import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[list(p) for p in image_grid_pinpoints],
        image_mean=list(image_mean),
        image_std=list(image_std),
        resample=3,  # PIL bicubic, as PIL's Image.resize default the original relies on
        do_pad=True,
    )


def tokenizer_image_token(
    prompt: str,
    tokenizer,
    image_token_id: int,
    num_image_tokens: int | Sequence[int],
) -> list[int]:
    """Token ids of ``prompt`` with every ``<image>`` replaced by a run of ``image_token_id``.

    As in the original evaluation, the prompt is split on ``<image>`` and each chunk is tokenised
    separately (each with BOS); the BOS of every chunk after the first is dropped. The i-th
    ``<image>`` becomes ``num_image_tokens[i]`` ids (an int applies to every image).
    """
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    n_images = len(chunks) - 1
    counts = [num_image_tokens] * n_images if isinstance(num_image_tokens, int) else list(num_image_tokens)
    if len(counts) != n_images:
        raise ValueError(f"prompt has {n_images} <image> placeholders but {len(counts)} token counts were given")
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
        chunk_ids = tokenizer(chunk).input_ids
        if i > 0:
            if chunk_ids and chunk_ids[0] == bos:
                chunk_ids = chunk_ids[1:]
            ids.extend([image_token_id] * counts[i - 1])
        ids.extend(chunk_ids)
    return ids
