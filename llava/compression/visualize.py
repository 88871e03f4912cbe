"""Draw which patches a compression method keeps (or how it merges them) over the image the model sees.

    python -m llava.compression.visualize --model-path DIR --image IMG --method fastervlm \\
        --visual-token-num 64 --out kept.png

The image is preprocessed exactly as for the model (padded to a square, resized, cropped), then the patch grid
is drawn on it: dropped patches are darkened; for selection methods kept patches are outlined; for merge methods
(PruMerge, VisionZip, pool) every output token's group of patches gets its own colour and the kept / centre
patches are outlined.
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path
from typing import Any

import torch

from llava.compression.registry import (
    CompressionConfigError,
    add_method_arguments,
    config_from_args,
    get_method,
)


def load_model_and_processor(model_path: str) -> tuple[Any, Any]:
    """Load a LLaVA checkpoint of either layout and its LLaVA-1.5 image processor (pad to square).

    The one import from ``llava.model`` in this package, deliberately inside this command-line helper: the
    method library itself never depends on the loader.
    """
    from llava.model.builder import load_pretrained_model

    _, model, processor, _ = load_pretrained_model(model_path, device="cpu", dtype="float32")
    return model, processor


def denormalize(pixel_values: torch.Tensor, mean: Any, std: Any):
    """``[3, H, W]`` normalised pixels -> a PIL RGB image."""
    from PIL import Image

    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    img = (pixel_values.float().cpu() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB")


def _palette(n: int) -> list[tuple[int, int, int]]:
    golden = 0.618033988749895
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * golden) % 1.0, 0.75, 1.0)) for i in range(n)]  # type: ignore[misc]


def draw_kept(
    image: Any,
    grid: tuple[int, int],
    kept_indices: list[int],
    groups: torch.Tensor | None = None,
    scale: int = 2,
) -> Any:
    """Overlay the patch grid on ``image`` (PIL): dropped patches dark, merge groups coloured, kept outlined.

    ``groups`` (``[N]``, output token of every patch, -1 = dropped) defaults to "kept patches only".
    """
    from PIL import Image, ImageDraw

    rows, cols = grid
    w, h = image.size
    base = image.convert("RGBA").resize((w * scale, h * scale), Image.NEAREST)
    ph, pw = base.size[1] / rows, base.size[0] / cols
    n = rows * cols
    if groups is None:
        groups = torch.full((n,), -1, dtype=torch.long)
        groups[torch.tensor(kept_indices, dtype=torch.long)] = torch.arange(len(kept_indices))
    groups = groups.cpu()
    slots = groups[groups >= 0]
    sizes = torch.bincount(slots) if slots.numel() else torch.zeros(0, dtype=torch.long)
    colours = _palette(len(sizes))
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(overlay)
    for p in range(n):
        r, c = divmod(p, cols)
        box = (c * pw, r * ph, (c + 1) * pw - 1, (r + 1) * ph - 1)
        g = int(groups[p])
        if g < 0:
            pen.rectangle(box, fill=(0, 0, 0, 170))
        elif sizes[g] > 1:  # a merge group: one colour per output token
            pen.rectangle(box, fill=(*colours[g], 110))
    for p in kept_indices:
        r, c = divmod(p, cols)
        pen.rectangle(
            (c * pw, r * ph, (c + 1) * pw - 1, (r + 1) * ph - 1), outline=(255, 255, 255, 255), width=2
        )
    return Image.alpha_composite(base, overlay).convert("RGB")


class CliError(Exception):
    """A user error reported as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llava.compression.visualize",
        description="Draw the patches a visual token compression method keeps (or merges) over an image.",
    )
    parser.add_argument("--model-path", required=True, help="LLaVA checkpoint directory")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--out", default="kept.png", help="output PNG (default: kept.png)")
    parser.add_argument("--scale", type=int, default=2, help="upscaling of the drawn image (default: 2)")
    add_method_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        get_method(args.method)  # unknown names fail before loading anything
        from PIL import Image, UnidentifiedImageError

        path = Path(args.image)
        if not path.is_file():
            raise CliError(f"image not found: {args.image}")
        try:
            image = Image.open(path).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise CliError(f"cannot read image {args.image}: {err}") from None
        if not Path(args.model_path).exists():
            raise CliError(f"model path not found: {args.model_path}")
        if args.scale < 1:
            raise CliError(f"--scale must be >= 1, got {args.scale}")

        import llava.compression as vtc
        from llava.model.builder import read_model_geometry

        config = config_from_args(args, read_model_geometry(args.model_path))  # before any weights load
        model, processor = load_model_and_processor(args.model_path)
        vtc.apply(model, config)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(model.dtype)
        with torch.no_grad():
            out = model.model.get_image_features(pixel_values=pixel_values)
        geometry = vtc.model_geometry(model)
        trace = getattr(out, "compression_trace", None)
        if trace is None:  # no method: everything is kept
            kept, groups, visual = list(range(geometry.num_patches)), None, geometry.num_patches
        else:
            kept, visual = trace[0]["kept_indices"], trace[0]["visual_tokens"]
            groups = out.token_groups[0] if out.token_groups is not None else None
        drawn = draw_kept(
            denormalize(pixel_values[0], processor.image_mean, processor.image_std),
            geometry.grid,
            kept,
            groups,
            scale=args.scale,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        drawn.save(args.out)
    except (CompressionConfigError, CliError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{config.name}: {visual}/{geometry.num_patches} visual tokens, {len(kept)} kept patches -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
