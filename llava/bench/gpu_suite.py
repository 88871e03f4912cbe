"""GPU suite: the latency harness over the published method set on a full-depth LLaVA-1.5-7B with random weights.

    python -m llava.bench.gpu_suite [--device cuda] [--out results/gpu_suite.json] [--markdown results/gpu_suite.md]
        [--methods none,fastervlm,...] [--tokens 64,128,192] [--batch-sizes 1,8] [--attn sdpa,flash_attention_2]
        [--repeats R] [--warmup W] [--new-tokens D] [--max-minutes M] [--layers N] [--vision-layers N]

One command for one GPU: the model is built directly on the device in fp16 (no CPU random init of 7B parameters),
then every method x budget x batch size is measured by :func:`llava.bench.latency.run_benchmark` (vision, method
overhead, prefill, TTFT, decode tokens/s, peak memory, KV cache; medians over the repeats with their min-max spread),
timed with CUDA events, once per attention implementation (SDPA, and FlashAttention-2 when ``flash_attn`` imports).
The JSON (``--out``) is rewritten after every setting, so a killed run still leaves its figures; a setting that
raises becomes an error row and the suite goes on; past ``--max-minutes`` the sweep drops repeats, then warm-up,
then skips the remaining settings (each recorded in the JSON).

On CPU (``--device cpu``, for CI) the defaults shrink: fp32, 2 vision layers, batch size 1, 1 run, no warm-up,
2 generated tokens; pass ``--layers 2`` for a 2-layer decoder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llava.bench import flops as F
from llava.bench import latency as L
from llava.bench.geometries import BenchGeometry, available_geometries, get_geometry

SUITE_METHODS = ("none", "fastervlm", "vtc-cls", "visionzip", "fastv", "pdrop", "sparsevlm", "dart", "ficoco-v",
                 "ficoco-l")
ATTENTION = ("sdpa", "flash_attention_2")
CUDA_DEFAULTS = {"dtype": "fp16", "batch_sizes": [1, 8], "repeats": 5, "warmup": 1, "new_tokens": 16,
                 "max_minutes": 5.0, "vision_layers": None}
CPU_DEFAULTS = {"dtype": "fp32", "batch_sizes": [1], "repeats": 1, "warmup": 0, "new_tokens": 2,
                "max_minutes": 3.0, "vision_layers": 2}
MARGIN_S = 15.0  # kept free before --max-minutes for the last setting in flight and the final write
TILE = 1_000_003  # length of the random tile the weights are read from (rows are distinct windows of it)


class SuiteError(RuntimeError):
    pass


# -- the model -------------------------------------------------------------------------------------------------------


def build_on_device(geometry: BenchGeometry, dtype: torch.dtype, device: str, seed: int = 0,
                    attn_implementation: str = "sdpa"):
    """``LlavaForConditionalGeneration`` of ``geometry``'s shape, allocated directly on ``device`` with transformers'
    weight initialisation switched off, then filled in place by :func:`fill_random_` (seconds for 7B on a GPU)."""
    from transformers import LlavaForConditionalGeneration

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights

    config = geometry.to_hf_config(attn_implementation)
    with torch.device(device), no_init_weights():
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    fill_random_(model, seed)
    return model.eval()


@torch.no_grad()
def fill_random_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Every parameter set in place on its own device, one copy each: norms to weight 1 / bias 0, other vectors
    (biases) to 0 (CLIP's class embedding excepted), and every matrix (seen as ``rows x rest``) from a strided window
    of one ``N(0, std)`` tile: row ``i`` starts ``i * shift`` further, with the start and shift changing from one
    parameter to the next, so no two rows or layers are equal while the reads stay in a few MB (fast on CPU too)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(TILE, generator=generator) * std
    tiles: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    shifts = (7, 11, 13, 17, 19, 23, 29, 31)
    index = 0
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or "Norm" in type(module).__name__
        for name, param in module.named_parameters(recurse=False):
            if is_norm:
                param.fill_(1.0 if name == "weight" else 0.0)
                continue
            if param.dim() < 2 and name != "class_embedding":
                param.zero_()
                continue
            key = (param.device, param.dtype)
            if key not in tiles:
                tiles[key] = base.to(device=param.device, dtype=param.dtype)
            matrix = param.view(param.shape[0], -1) if param.dim() >= 2 else param.view(1, -1)
            rows, cols = matrix.shape
            if cols > TILE:
                raise SuiteError(f"{name}: rows of {cols} values are longer than the random tile ({TILE})")
            shift = max(0, min(shifts[index % len(shifts)], (TILE - cols) // max(1, rows - 1)))
            span = shift * (rows - 1) + cols
            start = (index * 7919) % (TILE - span + 1)
            matrix.copy_(tiles[key].as_strided((rows, cols), (shift, 1), start))
            index += 1


def set_attention(model: Any, implementation: str) -> None:
    """Switch every sub-model to ``implementation`` (transformers' own dispatch)."""
    if model.config._attn_implementation != implementation:
        model.set_attn_implementation(implementation)
    actual = model.config.text_config._attn_implementation
    if actual != implementation:
        raise SuiteError(f"the model runs {actual!r} attention after asking for {implementation!r}")


def flash_attention_status() -> str | None:
    """``None`` when FlashAttention-2 can run, else why not."""
    if importlib.util.find_spec("flash_attn") is None:
        return "not installed (flash_attn does not import)"
    try:
        import flash_attn  # noqa: F401
    except Exception as err:  # noqa: BLE001 -- a broken build must not end the suite
        return f"flash_attn fails to import ({type(err).__name__}: {err})"[:200]
    return None


# -- metadata --------------------------------------------------------------------------------------------------------


def machine_info(device: str, dtype: str) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "dtype": dtype,
        "device": device,
        "host_cpus": os.cpu_count(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "device_name": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        })
    else:
        info["device_name"] = f"CPU {platform.processor() or platform.machine()}"
        info["threads"] = torch.get_num_threads()
    return info


# -- output ----------------------------------------------------------------------------------------------------------


def write_json(path: str | None, document: dict[str, Any]) -> None:
    """Atomic rewrite (a reader or a kill in the middle never sees half a file)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(L._finite(document), indent=1, default=str), encoding="utf-8")
    os.replace(tmp, target)


def report(document: dict[str, Any]) -> str:
    """The markdown for docs/benchmarks.md: a header naming the machine and settings, one table per attention
    implementation (cells ``median (min-max)``), then the notes."""
    meta, m, s = document["meta"], document["meta"]["machine"], document["meta"]["settings"]
    g = meta["geometry"]
    lines = [
        f"GPU suite: {meta['model']} shapes ({g['llm_layers']} of {meta['full_llm_layers']} decoder layers, "
        f"{g['vision_layers']} vision layers, random weights), {m['dtype']} on {m['device_name']}; torch "
        f"{m['torch']}" + (f" (CUDA {m['cuda']})" if m.get("cuda") else "") + f", transformers {m['transformers']}.",
        f"Per run: batch of {', '.join(map(str, s['batch_sizes']))} prompt(s), {s['text_tokens']} text tokens, "
        f"{s['new_tokens']} generated tokens; medians of {s['repeats']} run(s) after {s['warmup']} warm-up run(s), "
        f"(min-max) across the runs; clock: {'CUDA events' if s['clock'] == 'events' else s['clock']}; "
        f"model built in {meta['build_s']:.0f} s, suite finished in {meta.get('elapsed_s', 0):.0f} s"
        f" ({meta['status']}).",
    ]
    for impl, state in meta["attention"].items():
        if state != "measured":
            lines.append(f"{impl}: {state}.")
    text = "\n".join(lines) + "\n"
    for impl in meta["attention"]:
        rows = [r for r in document["rows"] if r.get("attn_implementation") == impl]
        if rows:
            text += f"\n**{impl}**\n\n" + L.markdown({"rows": rows}, spread=True)
    if document["notes"]:
        text += "\n" + "\n".join(f"- {n}" for n in document["notes"]) + "\n"
    return text


# -- command line ----------------------------------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava.bench.gpu_suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda[:i] (default) or cpu")
    p.add_argument("--model-config", default="llava-1.5-7b", help=f"one of {', '.join(available_geometries())}")
    p.add_argument("--layers", type=int, help="decoder layers (default: all)")
    p.add_argument("--vision-layers", type=int, help="vision encoder layers (default: all on CUDA, 2 on CPU)")
    p.add_argument("--dtype", help="fp16 (CUDA default), bf16 or fp32 (CPU default)")
    p.add_argument("--methods", default=",".join(SUITE_METHODS), help="comma-separated method names, or 'all'")
    p.add_argument("--tokens", type=L._ints, default=[64, 128, 192], help="visual-token budgets per sample")
    p.add_argument("--batch-sizes", type=L._ints, help="default 1,8 on CUDA, 1 on CPU")
    p.add_argument("--attn", default=",".join(ATTENTION),
                   help="attention implementations; flash_attention_2 is noted as not installed when flash_attn "
                        "does not import")
    p.add_argument("--repeats", type=int, help="timed runs per setting (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed runs per setting (default 1 on CUDA, 0 on CPU)")
    p.add_argument("--new-tokens", type=int, help="generated tokens (default 16 on CUDA, 2 on CPU)")
    p.add_argument("--text-tokens", type=int, default=F.TEXT_BEFORE_IMAGE + 25, help="text tokens per prompt")
    p.add_argument("--max-minutes", type=float,
                   help="the whole command's time limit, model building included (default 5 on CUDA, 3 on CPU): "
                        "fewer repeats, then no warm-up, then the remaining settings are skipped")
    p.add_argument("--no-attention-check", action="store_true", help="skip the attention guard in the warm-up run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/gpu_suite.json", help="JSON, rewritten after every setting")
    p.add_argument("--markdown", default="results/gpu_suite.md", help="the tables for docs/benchmarks.md")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> tuple[L.Settings, dict[str, Any]]:
    """The harness settings and the options the harness does not hold (vision layers, time limit, attention)."""
    cuda = str(args.device).startswith("cuda")
    d = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    attention = _names(args.attn)
    unknown = [a for a in attention if a not in ATTENTION]
    if unknown or not attention:
        raise SuiteError(f"--attn {args.attn!r}: choose from {', '.join(ATTENTION)}")
    for flag, value in (("--repeats", args.repeats), ("--new-tokens", args.new_tokens), ("--layers", args.layers),
                        ("--vision-layers", args.vision_layers), ("--max-minutes", args.max_minutes)):
        if value is not None and value <= 0:
            raise SuiteError(f"{flag} must be positive, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise SuiteError(f"--warmup must be 0 or more, got {args.warmup}")
    batch_sizes = args.batch_sizes or d["batch_sizes"]
    if any(b <= 0 for b in batch_sizes) or any(t <= 0 for t in args.tokens):
        raise SuiteError("--batch-sizes and --tokens must be positive integers")
    settings = L.Settings(
        device=args.device,
        dtype=args.dtype or d["dtype"],
        threads=None,
        repeats=args.repeats if args.repeats is not None else d["repeats"],
        warmup=args.warmup if args.warmup is not None else d["warmup"],
        new_tokens=max(2, args.new_tokens if args.new_tokens is not None else d["new_tokens"]),
        text_tokens=args.text_tokens,
        batch_sizes=tuple(batch_sizes),
        shared_tower=False,
        seed=args.seed,
        check_attention=not args.no_attention_check,
        clock="events" if cuda else "wall",
        keep_going=True,
        skip_when_late=True,
        rerun_baseline=cuda,
    )
    L.torch_dtype(settings.dtype)  # validates
    extra = {
        "vision_layers": args.vision_layers if args.vision_layers is not None else d["vision_layers"],
        "max_seconds": 60 * (args.max_minutes if args.max_minutes is not None else d["max_minutes"]),
        "attention": attention,
    }
    return settings, extra


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings, extra = settings_from_args(args)
        methods = F.sweep_methods(args.methods)
        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise SuiteError("no CUDA device is available: run on a GPU machine, or pass --device cpu")
        full = get_geometry(args.model_config)
    except (SuiteError, L.BenchError, F.FlopsError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_suite(args, settings, extra, methods, full)


def _interrupt_on_sigterm():
    """SIGTERM (``timeout``, a job scheduler) ends the sweep like Ctrl-C, so the final JSON and markdown are written;
    returns the function that restores the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere), so ``--max-minutes`` counts the imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    return age if 0.0 <= age < 3600 else 0.0  # an implausible reading (another clock base) counts as none


def run_suite(args: argparse.Namespace, settings: L.Settings, extra: dict[str, Any], methods: list[str],
              full: BenchGeometry) -> int:
    # the time limit covers the whole command (imports included) when run as a program; in-process calls (tests)
    # count from here
    started = time.perf_counter() - (process_age_s() if __name__ == "__main__" else 0.0)
    changes: dict[str, Any] = {"text_tokens": settings.text_tokens}
    if args.layers:
        changes["llm_layers"] = args.layers
    if extra["vision_layers"]:
        changes["vision_layers"] = min(extra["vision_layers"], full.vision_layers)
    geometry = full.replace(**changes)
    dtype = L.torch_dtype(settings.dtype)
    _log(f"gpu_suite: building {geometry.name} ({geometry.llm_layers} decoder / {geometry.vision_layers} vision "
         f"layers, {settings.dtype}) on {settings.device}")
    try:
        model = build_on_device(geometry, dtype, settings.device, settings.seed)
    except (RuntimeError, ValueError) as err:  # out of memory, an unknown device, ...
        print(f"error: could not build the model on {settings.device}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    build_s = time.perf_counter() - started
    machine = machine_info(settings.device, settings.dtype)
    _log(f"gpu_suite: built in {build_s:.1f} s on {machine['device_name']}; {len(methods)} method(s) x "
         f"{len(args.tokens)} budget(s) x batch {list(settings.batch_sizes)} x {extra['attention']}")
    fa_problem = flash_attention_status()
    attention_state = {impl: "pending" for impl in extra["attention"]}
    if "flash_attention_2" in attention_state and fa_problem:
        attention_state["flash_attention_2"] = fa_problem
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    document: dict[str, Any] = {"meta": {}, "rows": rows, "notes": notes}

    def refresh(status: str, impl_rows: list[dict[str, Any]] = (), impl_notes: list[str] = ()) -> None:
        document["rows"] = rows + list(impl_rows)
        document["notes"] = notes + list(impl_notes)
        document["meta"] = {
            "model": full.name,
            "full_llm_layers": full.llm_layers,
            "weights": "random weights",
            "geometry": geometry.to_dict(),
            "settings": settings.to_dict(),
            "machine": machine,
            "methods": methods,
            "budgets": list(args.tokens),
            "attention": dict(attention_state),
            "build_s": round(build_s, 1),
            "elapsed_s": round(time.perf_counter() - started, 1),
            "max_minutes": extra["max_seconds"] / 60,
            "status": status,
            "skipped": [f"{r['method']} {r['budget']} B={r['batch_size']} {r.get('attn_implementation')}: "
                        f"{r['skipped']}" for r in document["rows"] if "skipped" in r],
            "errors": [f"{r['method']} {r['budget']} B={r['batch_size']} {r.get('attn_implementation')}: "
                       f"{r['error']}" for r in document["rows"] if "error" in r],
        }
        write_json(args.out, document)

    refresh("running")
    status = "complete"
    restore = _interrupt_on_sigterm()
    in_flight: list[list] = [[], []]  # rows and notes of the attention implementation being measured
    try:
        with torch.inference_mode():
            for impl in extra["attention"]:
                if attention_state[impl] != "pending":
                    _log(f"gpu_suite: {impl}: {attention_state[impl]}")
                    continue
                left = extra["max_seconds"] - (time.perf_counter() - started) - MARGIN_S
                if left <= 0:
                    attention_state[impl] = "skipped (time limit)"
                    continue
                try:
                    set_attention(model, impl)
                except Exception as err:  # noqa: BLE001
                    attention_state[impl] = f"could not be set ({type(err).__name__}: {err})"[:200]
                    _log(f"gpu_suite: {impl}: {attention_state[impl]}")
                    continue
                _log(f"gpu_suite: {impl}: {left:.0f} s left for the sweep")
                settings.max_seconds = left
                attention_state[impl] = "running"

                def on_row(impl_rows, impl_notes, impl=impl):
                    for r in impl_rows:
                        r["attn_implementation"] = impl
                    in_flight[:] = [impl_rows, [f"{impl}: {n}" for n in impl_notes]]
                    refresh("running", *in_flight)

                result = L.run_benchmark(model, geometry, methods, args.tokens, settings, log=_log,
                                         full_llm_layers=full.llm_layers, on_row=on_row)
                on_row(result["rows"], result["notes"])
                rows.extend(result["rows"])
                notes.extend(f"{impl}: {n}" for n in result["notes"])
                in_flight[:] = [[], []]
                attention_state[impl] = "measured"
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as err:  # noqa: BLE001 -- outside any one setting: keep what was measured, say why it stopped
        status = f"failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"[:300]
        _log(f"gpu_suite: {status}")
    finally:
        restore()
        settings.max_seconds = extra["max_seconds"]
        rows.extend(in_flight[0])  # what an interrupted sweep measured
        notes.extend(in_flight[1])
        for impl, state in attention_state.items():
            if state == "pending":
                attention_state[impl] = "interrupted" if status == "interrupted" else "not measured"
            elif state == "running":
                attention_state[impl] = f"stopped: {status}"
        if status == "complete" and any("skipped" in r or "error" in r for r in rows):
            status = "complete (some settings skipped or failed, see meta.skipped / meta.errors)"
        refresh(status)
    text = report(document)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text, encoding="utf-8")
    print(text, end="", flush=True)
    _log(f"gpu_suite: {status} in {time.perf_counter() - started:.0f} s; JSON {args.out}, markdown {args.markdown}")
    return 0 if status.startswith("complete") else 1


if __name__ == "__main__":
    sys.exit(main())
