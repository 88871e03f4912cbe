"""Draw which patches a compression method keeps (or how it merges them) over the image the model sees.

    python -m llava.compression.visualize --model-path DIR --image IMG --method fastervlm \\
        --visual-token-num 64 --out kept.png

The image is preprocessed exactly as for the model (padded to a square, resized, cropped), then the patch grid
is drawn on it: dropped patches are darkened; for selection methods kept patches are outlined; for merge methods
(PruMerge, VisionZip, pool) every output token's group of patches gets its own colour and the kept / centre
patches are outlined.

In-LLM methods (FastV, PyramidDrop, SparseVLM, DART, FiCoCo-L) choose their tokens inside the decoder from a prompt
(``--question``): the image and question are run through the model once (one generated token) and one panel per
pruning layer shows the patches entering that layer (the trace's ``llm_kept_indices``); a merged / recycled token
is drawn as an orange patch at the place it takes (SparseVLM's cluster centre, FiCoCo-L's preserved token).
Methods that merge in the vision encoder *and* prune in the LLM (``ficoco-vl``) show the encoder's part only, and
say so.
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
    Stage,
    add_method_arguments,
    config_from_args,
    get_method,
)

DEFAULT_QUESTION = "Describe the image in detail."


def load_model_and_processor(model_path: str) -> tuple[Any, Any, Any]:
    """Load a LLaVA checkpoint of either layout: ``(tokenizer, model, LLaVA-1.5 image processor)``.

    The one import from ``llava.model`` in this package, deliberately inside this command-line helper: the
    method library itself never depends on the loader.
    """
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(model_path, device="cpu", dtype="float32")
    return tokenizer, model, processor


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


def draw_llm_layers(image: Any, grid: tuple[int, int], layer_kept: dict[str, list[int]], scale: int = 2) -> Any:
    """One :func:`draw_kept` panel per pruning layer of an in-LLM trace, side by side, each headed by its layer.

    ``layer_kept`` is a trace's ``llm_kept_indices``: layer -> patch indices entering it, merged tokens as ``-1 - i``
    (drawn as an orange patch ``i``).
    """
    from PIL import Image, ImageDraw

    panels = []
    for layer, kept in layer_kept.items():
        originals = [i for i in kept if i >= 0]
        stand_ins = sorted({-1 - i for i in kept if i < 0})
        panel = draw_kept(image, grid, sorted(set(originals) | set(stand_ins)), scale=scale).convert("RGBA")
        if stand_ins:
            overlay = Image.new("RGBA", panel.size, (0, 0, 0, 0))
            pen = ImageDraw.Draw(overlay)
            rows, cols = grid
            ph, pw = panel.size[1] / rows, panel.size[0] / cols
            for p in stand_ins:
                r, c = divmod(p, cols)
                pen.rectangle((c * pw, r * ph, (c + 1) * pw - 1, (r + 1) * ph - 1), fill=(255, 140, 0, 120))
            panel = Image.alpha_composite(panel, overlay)
        header = Image.new("RGBA", (panel.size[0], 16), (255, 255, 255, 255))
        ImageDraw.Draw(header).text(
            (4, 2), f"layer {layer}: {len(kept)}/{grid[0] * grid[1]} tokens", fill=(0, 0, 0, 255)
        )
        framed = Image.new("RGBA", (panel.size[0], panel.size[1] + header.size[1]))
        framed.paste(header, (0, 0))
        framed.paste(panel, (0, header.size[1]))
        panels.append(framed)
    width = sum(p.size[0] for p in panels)
    out = Image.new("RGB", (width, max(p.size[1] for p in panels)), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p.convert("RGB"), (x, 0))
        x += p.size[0]
    return out


def in_llm_kept(tokenizer: Any, model: Any, pixel_values: torch.Tensor, question: str) -> dict[str, list[int]]:
    """The ``llm_kept_indices`` of one image and question, from one generated token through the evaluation path."""
    from llava.eval.inference import GenerationSettings, LlavaGenerator

    generator = LlavaGenerator(tokenizer, model, save_kept_tokens=True)
    (result,) = generator.generate(
        [f"<image>\n{question}"], [pixel_values[0]], GenerationSettings(max_new_tokens=1)
    )
    return result.trace.get("llm_kept_indices", {})


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
    parser.add_argument(
        "--question",
        default=DEFAULT_QUESTION,
        help=f"in-LLM methods: the question their scores read (default: {DEFAULT_QUESTION!r})",
    )
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
        tokenizer, model, processor = load_model_and_processor(args.model_path)
        vtc.apply(model, config)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(model.dtype)
        stages = get_method(args.method).stages
        if stages == (Stage.LLM,):
            return _draw_in_llm(args, config, tokenizer, model, processor, pixel_values)
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
    note = ""
    if Stage.LLM in stages:
        note = " (the encoder's merge only: its in-LLM drops index merged tokens, not patches, and are not drawn)"
    print(
        f"{config.name}: {visual}/{geometry.num_patches} visual tokens, {len(kept)} kept patches -> {args.out}{note}"
    )
    return 0


def _draw_in_llm(args: argparse.Namespace, config: Any, tokenizer: Any, model: Any, processor: Any, pixel_values) -> int:
    """Draw an in-LLM method's kept patches, one panel per pruning layer."""
    import llava.compression as vtc

    geometry = vtc.model_geometry(model)
    try:
        layer_kept = in_llm_kept(tokenizer, model, pixel_values, args.question)
        n = geometry.grid[0] * geometry.grid[1]
        if not layer_kept or any(i >= n or i < -n for kept in layer_kept.values() for i in kept):
            raise CliError(
                f"{config.name}: the trace has no kept patch indices for this image (its visual tokens are not the "
                f"{geometry.grid[0]}x{geometry.grid[1]} patch grid); cannot draw them"
            )
        drawn = draw_llm_layers(
            denormalize(pixel_values[0], processor.image_mean, processor.image_std),
            geometry.grid,
            layer_kept,
            scale=args.scale,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        drawn.save(args.out)
    except (CompressionConfigError, CliError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    layers = ", ".join(f"layer {k}: {len(v)}/{geometry.num_patches}" for k, v in layer_kept.items())
    print(f"{config.name}: visual tokens entering each pruning layer: {layers} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
