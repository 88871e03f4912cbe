"""Latency harness: vision time, method overhead, prefill time, decode speed, peak memory and KV size per method.

    python -m llava.bench.latency --model-config llava-1.5-7b [--layers N] [--device cpu|cuda] [--dtype bf16]
        --methods all --tokens 64,128,192 [--batch-sizes 1,8] [--out results.json] [--plot out.png]
        [--model-path CKPT] [--repeats R] [--warmup W] [--new-tokens D] [--threads T]

Without ``--model-path`` the real architecture of ``--model-config`` is built with random weights (no checkpoint);
``--layers`` / ``--vision-layers`` shorten the decoder / encoder for quick runs. Every prompt has ``--text-tokens``
(60) text tokens around the image placeholders (35 before, the rest after, as the vicuna_v1 template).

What one measurement is (per method, budget and batch size; medians over ``--repeats`` after ``--warmup``):

* **vision**: the CLIP tower plus the method's reduction and the projector (for pre-LLM methods the image features
  are reduced before the projector by ``llava.compression.families.llava``'s own stage functions). With
  ``--shared-tower`` (default on CPU) the unmodified tower is timed once per batch size and its output reused by every
  method that does not change the tower (pre-LLM and in-LLM methods); in-encoder methods (ToMe, FiCoCo-V/-VL)
  always run their own tower;
* **overhead**: time inside the method's own ``reduce`` (pre-LLM), ``merge`` (in-encoder) or ``select`` (in-LLM)
  calls, i.e. its scoring / selection / merging, reported also as % of the unpruned time-to-first-token;
* **prefill**: ``generate()`` from its call to the first generated token (the decoder prefill, with in-LLM pruning);
* **TTFT** = vision + prefill; **decode**: generated tokens per second over the remaining ``--new-tokens - 1`` steps;
* **peak memory** above the level before the call (CUDA: ``max_memory_allocated``; CPU: resident set size sampled
  every 2 ms, with glibc's mmap threshold fixed so freed tensors leave the RSS);
* **KV cache**: bytes of the prefill's keys and values in the returned cache (decode steps subtracted), beside
  :func:`llava.bench.flops.kv_cache_bytes`.

Clock: on CPU with one torch thread (the CPU default) times are the measuring thread's CPU time (``--clock cpu``), so
other jobs on a shared machine do not inflate them; on CUDA, CUDA events recorded on the stream (``--clock events``: no
host synchronisation inside a timed region, e.g. between decode steps); otherwise wall-clock time. The unpruned model is
measured at the start and again at the end of each batch size's sweep (pooled; the drift is printed). With
``--max-minutes`` (4.5 on CPU) the sweep drops to fewer repeats (as many as fit, at least 1), then to no warm-up,
when it would run over (``Settings.skip_when_late``: then skips the remaining settings, recorded as skipped rows).

Speedups are TTFT (and prefill) of the unpruned model over the method's, next to the FLOPs-ideal speedup of
:mod:`llava.bench.flops` on the same (reduced) architecture and text length. In-LLM schedules are scaled to a
shortened decoder (``K -> round(K L' / 32)``, see :func:`llava.bench.flops.budget_args`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llava.bench import flops as F
from llava.bench.geometries import (
    BenchGeometry,
    available_geometries,
    geometry_from_hf_config,
    get_geometry,
)
from llava.compression.registry import MethodConfig, NoCompression, Stage, get_method

SCHEDULE_DEPTH = 32  # the decoder depth the published in-LLM schedules (FastV K=2, PDrop 8/16/24, ...) were made for
CPU_MAX_MINUTES = 4.5


class BenchError(RuntimeError):
    pass


# -- settings --------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: str = "cpu"
    dtype: str = "bf16"
    threads: int | None = None
    repeats: int = 3
    warmup: int = 1
    new_tokens: int = 4
    text_tokens: int = F.TEXT_BEFORE_IMAGE + 25
    batch_sizes: tuple[int, ...] = (1,)
    shared_tower: bool = True
    max_seconds: float | None = None
    seed: int = 0
    check_attention: bool = True
    clock: str = "wall"
    keep_going: bool = False  # a setting that raises becomes an error row and the sweep goes on
    skip_when_late: bool = False  # past --max-minutes, drop the remaining settings (recorded) instead of running over
    rerun_baseline: bool = True  # measure the unpruned model again at the end of each batch size's sweep

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise BenchError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


# -- model and inputs ------------------------------------------------------------------------------------------------


def build_random_model(geometry: BenchGeometry, dtype: torch.dtype, device: str, seed: int = 0):
    """``LlavaForConditionalGeneration`` of ``geometry``'s shape with random weights (SDPA attention), in eval mode."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(geometry.to_hf_config("sdpa"), dtype=dtype)
    return model.to(device).eval()


def truncate_decoder(model: Any, layers: int) -> None:
    """Keep the first ``layers`` decoder layers of a loaded model (``--model-path`` with ``--layers``)."""
    lm = model.model.language_model
    if layers < len(lm.layers):
        lm.layers = lm.layers[:layers]
        lm.config.num_hidden_layers = layers
        model.config.text_config.num_hidden_layers = layers


def make_inputs(model: Any, geometry: BenchGeometry, batch: int, text_tokens: int, seed: int = 0):
    """``(input_ids, attention_mask, pixel_values)`` of ``batch`` identical-shape prompts with random text ids:
    ``<s>`` + 34 text tokens, the images' placeholder runs, then the remaining text tokens."""
    g = torch.Generator().manual_seed(seed)
    image_id = int(model.config.image_token_id)
    vocab = min(image_id, model.config.text_config.vocab_size)
    before = min(F.TEXT_BEFORE_IMAGE, text_tokens)
    after = text_tokens - before
    rows = []
    for _ in range(batch):
        head = [1] + torch.randint(3, vocab, (max(0, before - 1),), generator=g).tolist()
        tail = torch.randint(3, vocab, (after,), generator=g).tolist()
        rows.append(head + [image_id] * geometry.visual_tokens + tail)
    device = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    size = geometry.image_size
    pixels = torch.randn(batch * geometry.images_per_sample, 3, size, size, generator=g).to(device, dtype)
    return ids, mask, pixels


# -- timing helpers --------------------------------------------------------------------------------------------------


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time, "events": time.perf_counter}
_now = time.perf_counter  # the measuring clock; run_benchmark switches it to Settings.clock
_events = False  # "events" clock: CUDA events recorded on the stream, no host synchronisation inside a timed region


@contextlib.contextmanager
def using_clock(name: str) -> Iterator[None]:
    """Measure with ``"wall"`` (``perf_counter``), ``"cpu"`` (this thread's CPU time: with one torch thread every
    op runs on the calling thread, and time lost to other processes on a shared machine is not counted) or
    ``"events"`` (CUDA events on the current stream; on a CPU tensor it falls back to ``perf_counter``)."""
    global _now, _events
    previous = _now, _events
    _now, _events = CLOCKS[name], name == "events"
    try:
        yield
    finally:
        _now, _events = previous


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _mark(device: torch.device | str) -> Any:
    """A point in time: a recorded CUDA event (``events`` clock on a CUDA device: no host sync), else the clock's
    reading after synchronising the device."""
    if _events and torch.device(device).type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    _sync(device)
    return _now()


def _seconds(start: Any, end: Any) -> float:
    """Seconds between two :func:`_mark` points (waits for ``end``'s event when they are CUDA events)."""
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1e3


class _StepClock:
    """A ``StoppingCriteria`` that records when each generated token is ready (never stops generation)."""

    def __init__(self, device):
        self.device = device
        self.times: list[Any] = []  # _mark points

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(_mark(self.device))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _Timed:
    """Wraps named methods of some objects (instance attributes) and sums the time spent in them."""

    def __init__(self, device, targets: Sequence[tuple[Any, str]]):
        self.device = device
        self._spans: list[tuple[Any, Any]] = []
        self._targets = [(obj, name) for obj, name in targets if obj is not None and hasattr(obj, name)]

    def __enter__(self) -> _Timed:
        for obj, name in self._targets:
            original = getattr(obj, name)

            def timed(*args, _original=original, **kwargs):
                start = _mark(self.device)
                out = _original(*args, **kwargs)
                self._spans.append((start, _mark(self.device)))
                return out

            object.__setattr__(obj, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for obj, name in self._targets:
            obj.__dict__.pop(name, None)

    @property
    def seconds(self) -> float:
        """Total time in the wrapped calls so far (waits for their end events under the ``events`` clock)."""
        return sum(_seconds(a, b) for a, b in self._spans)


def _fix_malloc_for_rss() -> None:
    """glibc: serve allocations >= 1 MiB by mmap and never raise that threshold, so freed tensors leave the RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator statistics, or a 2 ms RSS sampler on CPU."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, _rss_bytes())
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._start)
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_bytes = max(0, self._peak - self._start)


# -- attention guard -------------------------------------------------------------------------------------------------


class AttentionGuardError(AssertionError):
    """A method requested eager attention or returned attention weights."""


@dataclass
class AttentionReport:
    """What :func:`attention_guard` saw: eager attention calls, attention modules returning weights, and softmax
    calls over a square map at least ``threshold`` wide (an all-pairs attention map the method built itself)."""

    threshold: int
    eager_calls: int = 0
    returned_weights: int = 0
    square_maps: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.eager_calls == 0 and self.returned_weights == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "eager_attention_calls": self.eager_calls,
            "returned_attention_weights": self.returned_weights,
            "square_attention_maps": len(self.square_maps),
            "largest_square_map": list(max(self.square_maps, key=lambda s: s[-1] * s[-2])) if self.square_maps else None,
        }


@contextlib.contextmanager
def attention_guard(model: Any, threshold: int, strict: bool = True) -> Iterator[AttentionReport]:
    """Watch a model while a method runs.

    * the eager attention functions of CLIP, Llama and Qwen2.5-VL (its vision tower and decoder share one) are
      replaced by ones that fail (``strict``) or count: SDPA /
      FlashAttention models never call them, so any call means something switched a layer to eager;
    * every attention module gets a forward hook that fails / counts when it returns attention weights
      (``output_attentions``);
    * ``softmax`` (function, tensor method, ``torch.softmax``) over an input whose last two sizes are both
      ``>= threshold`` is recorded: an all-pairs attention map built by the method itself (allowed, reported).
    """
    import transformers.models.clip.modeling_clip as clip_mod
    import transformers.models.llama.modeling_llama as llama_mod
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen_mod

    report = AttentionReport(threshold=threshold)

    def refuse(kind: str):
        def eager(*args, **kwargs):
            report.eager_calls += 1
            if strict:
                raise AttentionGuardError(f"eager {kind} attention was called (attention maps materialised)")
            return original[kind](*args, **kwargs)

        return eager

    original = {"clip": clip_mod.eager_attention_forward, "llama": llama_mod.eager_attention_forward,
                "qwen2.5-vl": qwen_mod.eager_attention_forward}
    softmaxes = {"F": torch.nn.functional.softmax, "torch": torch.softmax, "tensor": torch.Tensor.softmax}

    def watch(fn):
        def softmax(x, *args, **kwargs):
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and min(x.shape[-2:]) >= threshold:
                report.square_maps.append(tuple(x.shape))
            return fn(x, *args, **kwargs)

        return softmax

    def hook(module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
            report.returned_weights += 1
            if strict:
                raise AttentionGuardError(f"{type(module).__name__} returned attention weights")

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if type(m).__name__.endswith("Attention") and hasattr(m, "q_proj")
    ]
    clip_mod.eager_attention_forward = refuse("clip")
    llama_mod.eager_attention_forward = refuse("llama")
    qwen_mod.eager_attention_forward = refuse("qwen2.5-vl")
    torch.nn.functional.softmax = watch(softmaxes["F"])
    torch.softmax = watch(softmaxes["torch"])
    torch.Tensor.softmax = watch(softmaxes["tensor"])
    try:
        yield report
    finally:
        clip_mod.eager_attention_forward = original["clip"]
        llama_mod.eager_attention_forward = original["llama"]
        qwen_mod.eager_attention_forward = original["qwen2.5-vl"]
        torch.nn.functional.softmax = softmaxes["F"]
        torch.softmax = softmaxes["torch"]
        torch.Tensor.softmax = softmaxes["tensor"]
        for h in handles:
            h.remove()


# -- one method on one batch -----------------------------------------------------------------------------------------


@dataclass
class _Run:
    tower_s: float
    vision_s: float
    overhead_s: float
    prefill_s: float
    decode_s: float
    peak_bytes: int
    kv_bytes: int
    llm_tokens: int
    visual_tokens_per_layer: list[int] | None


class MethodRunner:
    """Runs the vision side, the method and ``generate`` for one method config on one batch."""

    def __init__(self, model: Any, geometry: BenchGeometry, config: MethodConfig, inputs, settings: Settings):
        import llava.compression as vtc
        from llava.compression.families import clip_merging, decoder_pruning
        from llava.compression.families.llava import (
            collect_vision_signals,
            model_geometry,
            reduce_and_project,
        )

        self.model, self.g, self.config, self.settings = model, geometry, config, settings
        self.ids, self.mask, self.pixels = inputs
        self.device = self.ids.device
        self.spec = get_method(config.name)
        self.geo = model_geometry(model)
        self._collect = collect_vision_signals
        self._reduce_and_project = reduce_and_project
        self._encode_and_project = clip_merging.encode_and_project
        self.encoder_stage = Stage.VISION_ENCODER in self.spec.stages
        self.pre_llm = Stage.PRE_LLM in self.spec.stages
        self.vision_method = clip_merging.vision_part(config, self.geo) if self.encoder_stage else None
        vtc.remove(model)
        if Stage.LLM in self.spec.stages:
            vtc.apply(model, config)
        self.llm_method = decoder_pruning.applied_config(model)
        self._llama_pruning = decoder_pruning
        self._vtc = vtc
        self.probe_layers: tuple[int, ...] = ()
        if self.pre_llm:
            self.probe_layers = tuple(sorted(set(config.probe_layers(self.geo))))
        self.shared: tuple[Any, float] | None = None  # (signals, tower seconds) from the shared tower run

    def close(self) -> None:
        self._vtc.remove(self.model)

    def tower(self) -> tuple[Any, float]:
        """Vision signals of the unmodified tower (with every probe layer any pre-LLM method needs) and its time."""
        start = _mark(self.device)
        signals, _ = self._collect(self.model, self.pixels, self.probe_layers, with_image_keys=True)
        return signals, _seconds(start, _mark(self.device))

    def encode(self) -> tuple[list[torch.Tensor], float, float, float]:
        """``(features per image, tower seconds, vision seconds, overhead seconds)``."""
        model = self.model
        with _Timed(self.device, [(self.config, "reduce"), (self.vision_method, "merge")]) as timer:
            if self.encoder_stage:
                start = _mark(self.device)
                feats, _, _ = self._encode_and_project(model.model, self.pixels, self.vision_method, self.geo)
                tower_s = vision_s = _seconds(start, _mark(self.device))
                return feats, tower_s, vision_s, timer.seconds
            if self.shared is not None:
                signals, tower_s = self.shared
            else:
                signals, tower_s = self.tower()
            start = _mark(self.device)
            if self.pre_llm:
                feats, _ = self._reduce_and_project(self.config, signals, model.model.multi_modal_projector)
            else:
                feats = list(model.model.multi_modal_projector(signals.patches))
            return feats, tower_s, tower_s + _seconds(start, _mark(self.device)), timer.seconds

    def run(self) -> _Run:
        from transformers import GenerationConfig, StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from llava.compression.placeholders import shrink_placeholder_runs

        model, s = self.model, self.settings
        with PeakMemory(self.device) as mem:
            feats, tower_s, vision_s, overhead_s = self.encode()
            counts = [int(f.shape[0]) for f in feats]
            ids, mask = self.ids, self.mask
            if any(c != self.g.patches_per_image for c in counts):
                ids, mask = shrink_placeholder_runs(
                    ids, mask, model.config.image_token_id, counts, 0, tokens_per_image=self.g.patches_per_image
                )
            clock = _StepClock(self.device)
            gen = GenerationConfig(
                max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens, do_sample=False, use_cache=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=0, return_dict_in_generate=True,
            )
            with _Timed(self.device, [(self.llm_method, "select")]) as llm_timer:
                t0 = _mark(self.device)
                out = model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=gen,
                    stopping_criteria=StoppingCriteriaList([clock]),
                    mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=feats)},
                )
        prefill_s = _seconds(t0, clock.times[0])
        decode_s = _seconds(clock.times[0], clock.times[-1]) if len(clock.times) > 1 else float("nan")
        trace = getattr(out, "llm_compression_trace", None)
        per_layer = trace[0].get("visual_tokens_per_layer") if trace else None
        return _Run(
            tower_s=tower_s,
            vision_s=vision_s,
            overhead_s=overhead_s + llm_timer.seconds,
            prefill_s=prefill_s,
            decode_s=decode_s,
            peak_bytes=mem.peak_bytes,
            kv_bytes=_prefill_kv_bytes(out.past_key_values, len(clock.times) - 1),
            llm_tokens=int(ids.shape[1]),
            visual_tokens_per_layer=per_layer,
        )


def _prefill_kv_bytes(cache: Any, decode_steps: int) -> int:
    """Bytes of the prefill's keys and values (the ``decode_steps`` tokens appended later subtracted)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is None or t.dim() != 4:
                continue
            b, h, n, d = t.shape
            total += b * h * max(0, n - decode_steps) * d * t.element_size()
    return total


# -- the sweep -------------------------------------------------------------------------------------------------------


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def run_benchmark(
    model: Any,
    geometry: BenchGeometry,
    methods: Sequence[str],
    budgets: Sequence[int],
    settings: Settings,
    log: Callable[[str], None] = print,
    full_llm_layers: int | None = None,
    on_row: Callable[[list[dict[str, Any]], list[str]], None] | None = None,
) -> dict[str, Any]:
    """Measure every (method, budget) on every batch size; returns the JSON-serialisable results.

    ``full_llm_layers``: the depth of the real model when ``geometry`` is shortened; the method overhead is then also
    given as % of the unpruned TTFT extrapolated to that depth (prefill time scaled by the layer ratio).
    ``on_row(rows, notes)`` is called after every setting with the rows and notes so far (incremental output).
    """
    depth_scale = (full_llm_layers or geometry.llm_layers) / geometry.llm_layers
    started = time.perf_counter()
    notes: list[str] = []
    configs = configs_for(methods, budgets, geometry)
    with using_clock(settings.clock):
        return _run_benchmark(model, geometry, settings, log, depth_scale, started, configs, notes,
                              on_row or (lambda rows, notes: None))


def configs_for(methods: Sequence[str], budgets: Sequence[int], geometry: BenchGeometry) -> list[tuple]:
    """``(method, budget, args, config or None, error or None)`` for every setting of the sweep."""
    configs = []
    for method in methods:
        spec = get_method(method)
        for budget in [None] if spec.config_cls is NoCompression else budgets:
            args = {} if budget is None else F.budget_args(
                method, budget, SCHEDULE_DEPTH, geometry.llm_layers, images=geometry.images_per_sample
            )
            try:
                config, error = F.build_config(method, geometry, args), None
            except F.FlopsError as err:
                config, error = None, str(err)
            configs.append((method, budget, args, config, error))
    return configs


def _run_benchmark(model, geometry, settings, log, depth_scale, started, configs, notes, on_row) -> dict[str, Any]:
    """The sweep of :func:`run_benchmark` (wall-clock ``started`` / deadline; measurements on the chosen clock)."""
    rows: list[dict[str, Any]] = []
    dtype_bytes = model.get_input_embeddings().weight.element_size()
    deadline = None if settings.max_seconds is None else started + settings.max_seconds
    repeats, warmup = settings.repeats, settings.warmup
    run_seconds: list[float] = []
    done = 0
    total = len(configs) * len(settings.batch_sizes)
    union_probes = sorted({
        layer
        for *_, config, _e in configs
        if config is not None and Stage.PRE_LLM in get_method(config.name).stages
        for layer in config.probe_layers(geometry.compression_geometry())
    })

    def left_for(runs_per_setting: int, settings_left: int) -> bool:
        """Whether ``settings_left`` settings of ``runs_per_setting`` runs each fit before the deadline."""
        if deadline is None or not run_seconds:
            return True
        per_run = sum(run_seconds) / len(run_seconds)
        return deadline - time.perf_counter() >= per_run * settings_left * runs_per_setting

    for batch in settings.batch_sizes:
        inputs = make_inputs(model, geometry, batch, settings.text_tokens, settings.seed)
        shared: tuple[Any, float] | None = None
        baseline: tuple | None = None
        batch_rows: list[dict[str, Any]] = []
        for method, budget, args, config, error in configs:
            row: dict[str, Any] = {"method": method, "budget": budget, "batch_size": batch, "method_args": args}
            if config is None:
                done += 1
                row["skipped"] = error
                rows.append(row)
                log(f"  {method} {budget}: skipped ({error})")
                on_row(rows, notes)
                continue
            if settings.skip_when_late and deadline is not None and not left_for(1, 1):
                done += 1
                row["skipped"] = "time limit (--max-minutes): not measured"
                rows.append(row)
                log(f"  {method} {budget} B={batch}: skipped (time limit)")
                on_row(rows, notes)
                continue
            if deadline is not None and run_seconds and (repeats > 1 or warmup > 0):
                # the remaining settings' runs at the mean run time so far must fit before the deadline: fewer
                # repeats first (as many as fit, at least 1), then no warm-up
                remaining = total - done
                if repeats > 1 and not left_for(repeats + warmup, remaining):
                    repeats = next((r for r in range(repeats - 1, 0, -1) if left_for(r + warmup, remaining)), 1)
                    notes.append(f"time limit: {repeats} repeat(s) from {method} {budget} B={batch} on")
                    log(f"  [time limit: {repeats} repeat(s) from {method} {budget} on]")
                if warmup > 0 and not left_for(repeats + warmup, remaining):
                    warmup = 0
                    notes.append(f"time limit: no warm-up run (and no attention check) from {method} {budget} "
                                 f"B={batch} on")
                    log(f"  [time limit: no warm-up from {method} {budget} on]")
            log(f"  {method}{'' if budget is None else f' {budget}'} B={batch}: measuring "
                f"({warmup} warm-up + {repeats} run(s)) [{done + 1}/{total}, "
                f"{time.perf_counter() - started:.0f} s]")
            runner = None
            attention = None
            failed = False
            try:
                counts = F.token_counts(config, geometry, text_tokens=settings.text_tokens)
                fl = F.breakdown(counts, geometry, settings.text_tokens)
                runner = MethodRunner(model, geometry, config, inputs, settings)
                if settings.shared_tower and not runner.encoder_stage:
                    if shared is None:
                        runner.probe_layers = tuple(union_probes)
                        towers = [runner.tower() for _ in range(max(1, settings.warmup) + repeats)]
                        keep = towers[max(1, settings.warmup):] or towers[-1:]
                        shared = (towers[-1][0], _median([t for _, t in keep]))
                    runner.shared = shared
                for w in range(warmup):
                    if settings.check_attention and w == 0:
                        with attention_guard(model, geometry.patches_per_image, strict=False) as attention:
                            runner.run()
                    else:
                        runner.run()
                runs = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    runs.append(runner.run())
                    if method != "none":  # the unpruned runs are the slowest: estimating from them is too pessimistic
                        run_seconds.append(time.perf_counter() - t)
                if getattr(config, "budget_is_approximate", False):  # the budget only steers the count: use the real
                    observed = runs[-1].llm_tokens - settings.text_tokens
                    counts = F.token_counts(config, geometry, visual_tokens=observed, text_tokens=settings.text_tokens)
                    fl = F.breakdown(counts, geometry, settings.text_tokens)
                row.update(_summarise(runs, counts, fl, runner.spec.stages, geometry, settings, dtype_bytes, batch))
            except Exception as err:  # noqa: BLE001 -- with keep_going one failing method must not end the sweep
                if not settings.keep_going:
                    raise
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
                failed = True
            finally:
                if runner is not None:
                    runner.close()
                done += 1
            if failed:  # outside the except block, so the traceback's frames (and their tensors) are gone
                runner = None
                _release_memory(settings.device)
                rows.append(row)
                log(f"  {method} {budget} B={batch}: ERROR {row['error']}")
                on_row(rows, notes)
                continue
            row["runs_s"] = [round(r.vision_s + r.prefill_s, 4) for r in runs]
            if attention is not None:
                row["attention_check"] = attention.to_dict()
            if method == "none":
                baseline = (row, config, counts, fl, runs)
            rows.append(row)
            batch_rows.append(row)
            log(_progress_line(row))
            on_row(rows, notes)
        if baseline is not None:
            row, config, counts, fl, start_runs = baseline
            if settings.rerun_baseline and (not settings.skip_when_late or left_for(max(1, repeats), 1)):
                # the unpruned model again at the end: on a shared machine the load drifts during a sweep, so its
                # runs from both ends are pooled and the drift is reported
                runner = MethodRunner(model, geometry, config, inputs, settings)
                runner.shared = shared
                try:
                    end_runs = [runner.run() for _ in range(max(1, repeats))]
                except Exception as err:  # noqa: BLE001
                    if not settings.keep_going:
                        raise
                    end_runs = []
                    notes.append(f"batch {batch}: the unpruned re-run at the end failed ({type(err).__name__})")
                    _release_memory(settings.device)
                finally:
                    runner.close()
            else:
                end_runs = []
                notes.append(f"batch {batch}: no unpruned re-run at the end of the sweep")
            if end_runs:
                row.update(_summarise(start_runs + end_runs, counts, fl, runner.spec.stages, geometry, settings,
                                      dtype_bytes, batch))
                start, end = (_median([r.prefill_s for r in rs]) * 1e3 for rs in (start_runs, end_runs))
                row["prefill_ms_start_end"] = [start, end]
                notes.append(f"batch {batch}: unpruned prefill {start:.0f} ms at the start, {end:.0f} ms at the end "
                             "of the sweep (both pooled into its median)")
            for r in batch_rows:
                if "skipped" not in r and "error" not in r:
                    _add_speedups(r, row, depth_scale)
            on_row(rows, notes)
    elapsed = time.perf_counter() - started
    return {"rows": rows, "notes": notes, "elapsed_s": round(elapsed, 1)}


def _release_memory(device: str) -> None:
    """After a failed setting: give the CUDA caching allocator's blocks back (an OOM must not spill into the next)."""
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _summarise(runs: list[_Run], counts, fl, stages, geometry, settings, dtype_bytes, batch) -> dict[str, Any]:
    vision = _median([r.vision_s for r in runs])
    prefill = _median([r.prefill_s for r in runs])
    decode = _median([r.decode_s for r in runs])
    steps = settings.new_tokens - 1
    llm_part = fl.llm + fl.lm_head
    vision_part = fl.vision + fl.projector
    if Stage.LLM in stages and Stage.VISION_ENCODER not in stages:
        llm_part += fl.method
    else:
        vision_part += fl.method
    last = runs[-1]
    ttfts = [(r.vision_s + r.prefill_s) * 1e3 for r in runs]
    prefills = [r.prefill_s * 1e3 for r in runs]
    decodes = [batch * steps / r.decode_s for r in runs if r.decode_s and r.decode_s == r.decode_s]
    return {
        "llm_input_tokens": last.llm_tokens,
        "visual_tokens": counts.visual_tokens,
        "avg_visual_tokens": round(counts.avg_visual_tokens, 2),
        "visual_tokens_per_layer": counts.visual_tokens_per_layer,
        "traced_visual_tokens_per_layer": last.visual_tokens_per_layer,
        "tower_ms": _median([r.tower_s for r in runs]) * 1e3,
        "vision_ms": vision * 1e3,
        "overhead_ms": _median([r.overhead_s for r in runs]) * 1e3,
        "prefill_ms": prefill * 1e3,
        "ttft_ms": (vision + prefill) * 1e3,
        "decode_tok_s": batch * steps / decode if decode and decode == decode else float("nan"),
        "peak_mb": max(r.peak_bytes for r in runs) / 1e6,
        "kv_mb": last.kv_bytes / 1e6,
        "kv_mb_formula": F.kv_cache_bytes(counts, geometry, settings.text_tokens, dtype_bytes, batch) / 1e6,
        "tflops": fl.total / 1e12,
        "tflops_llm_only": fl.llm / 1e12,
        "ideal_ttft_flops": fl.total,
        "ideal_prefill_flops": llm_part,
        "ideal_vision_flops": vision_part,
        "method_overhead_gflops": fl.method / 1e9,
        "repeats": len(runs),
        # the spread across the runs (min, max)
        "vision_ms_range": [min(r.vision_s for r in runs) * 1e3, max(r.vision_s for r in runs) * 1e3],
        "prefill_ms_range": [min(prefills), max(prefills)],
        "ttft_ms_range": [min(ttfts), max(ttfts)],
        "decode_tok_s_range": [min(decodes), max(decodes)] if decodes else [float("nan"), float("nan")],
    }


def _add_speedups(row: dict[str, Any], base: dict[str, Any], depth_scale: float = 1.0) -> None:
    def ratio(a, b):
        return a / b if b else float("nan")

    row["ttft_speedup"] = ratio(base["ttft_ms"], row["ttft_ms"])
    row["ttft_speedup_ideal"] = ratio(base["ideal_ttft_flops"], row["ideal_ttft_flops"])
    row["prefill_speedup"] = ratio(base["prefill_ms"], row["prefill_ms"])
    row["prefill_speedup_ideal"] = ratio(base["ideal_prefill_flops"], row["ideal_prefill_flops"])
    row["ttft_pct_of_ideal"] = 100 * ratio(row["ttft_speedup"], row["ttft_speedup_ideal"])
    row["prefill_pct_of_ideal"] = 100 * ratio(row["prefill_speedup"], row["prefill_speedup_ideal"])
    row["overhead_pct_of_base_ttft"] = 100 * ratio(row["overhead_ms"], base["ttft_ms"])
    full_ttft = base["vision_ms"] + base["prefill_ms"] * depth_scale
    row["overhead_pct_of_full_depth_ttft"] = 100 * ratio(row["overhead_ms"], full_ttft)


def _progress_line(row: dict[str, Any]) -> str:
    budget = "" if row["budget"] is None else row["budget"]
    return (
        f"  {row['method']} {budget} B={row['batch_size']}: vision {row['vision_ms']:.0f} ms, prefill "
        f"{row['prefill_ms']:.0f} ms, overhead {row['overhead_ms']:.1f} ms, decode {row['decode_tok_s']:.1f} tok/s"
    )


# -- output ----------------------------------------------------------------------------------------------------------


def _f(x: Any, fmt: str = ".0f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return ""
    return format(x, fmt)


def _with_range(r: dict[str, Any], key: str, fmt: str, spread: bool) -> str:
    """``median`` or, with ``spread``, ``median (min-max)`` of a row's ``key`` / ``key_range``."""
    low, high = r.get(f"{key}_range") or (None, None)
    if not spread or low is None:
        return _f(r[key], fmt)
    return f"{_f(r[key], fmt)} ({_f(low, fmt)}-{_f(high, fmt)})"


def markdown(results: dict[str, Any], spread: bool = False) -> str:
    """The results table; with ``spread`` the prefill, TTFT and decode cells are ``median (min-max)`` over the runs."""
    lines = [
        "| method | budget | B | LLM tokens | avg vis/layer | vision ms | overhead ms (% base, % full depth) "
        "| prefill ms | TTFT ms "
        "| TTFT speedup (ideal) | prefill speedup (ideal) | % of ideal prefill | decode tok/s | peak MB | KV MB (formula) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        budget = "" if r["budget"] is None else r["budget"]
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}"
            why = why[:120].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['method']} | {budget} | {r['batch_size']} | {why} |" + " |" * 11)
            continue
        sp = f"{_f(r.get('ttft_speedup'), '.2f')}x ({_f(r.get('ttft_speedup_ideal'), '.2f')}x)"
        pp = f"{_f(r.get('prefill_speedup'), '.2f')}x ({_f(r.get('prefill_speedup_ideal'), '.2f')}x)"
        lines.append(
            f"| {r['method']} | {budget} | {r['batch_size']} | {r['llm_input_tokens']} | {r['avg_visual_tokens']:.0f} "
            f"| {_f(r['vision_ms'])} | {_f(r['overhead_ms'], '.1f')} ({_f(r.get('overhead_pct_of_base_ttft'), '.2f')}%, "
            f"{_f(r.get('overhead_pct_of_full_depth_ttft'), '.2f')}%) "
            f"| {_with_range(r, 'prefill_ms', '.0f', spread)} | {_with_range(r, 'ttft_ms', '.0f', spread)} "
            f"| {sp} | {pp} | {_f(r.get('prefill_pct_of_ideal'))}% "
            f"| {_with_range(r, 'decode_tok_s', '.1f', spread)} | {_f(r['peak_mb'], '.1f')} | {_f(r['kv_mb'], '.2f')} "
            f"({_f(r['kv_mb_formula'], '.2f')}) |"
        )
    return "\n".join(lines) + "\n"


def header(meta: dict[str, Any]) -> str:
    s = meta["settings"]
    g = meta["geometry"]
    lines = [
        f"Model: {meta['model']} ({g['llm_layers']} of {meta['full_llm_layers']} decoder layers, {g['vision_layers']} "
        f"vision layers; {meta['weights']}), {s['dtype']} on {meta['device_name']}, {s['threads']} thread(s), "
        + ("times are CPU time of the measuring thread" if s["clock"] == "cpu" else "wall-clock times"),
        f"Per run: batch of {', '.join(map(str, s['batch_sizes']))} prompt(s) x {g['images_per_sample']} image(s), "
        f"{s['text_tokens']} text tokens, {s['new_tokens']} generated tokens; medians of {s['repeats']} repeat(s) "
        f"after {s['warmup']} warm-up run(s)" + (" (reduced for the time limit, see below)" if meta["reduced"] else ""),
    ]
    if s["shared_tower"]:
        lines.append("The unmodified vision tower is timed once per batch size and shared by every method that does "
                     "not change it; in-encoder methods run their own tower.")
    if meta["full_llm_layers"] != g["llm_layers"]:
        lines.append(
            f"Overhead '% full depth': of the unpruned TTFT extrapolated to {meta['full_llm_layers']} decoder layers "
            f"(vision + prefill x {meta['full_llm_layers']}/{g['llm_layers']}). In-LLM schedules are scaled to "
            f"{g['llm_layers']} layers (llava.bench.flops.budget_args)."
        )
    lines.extend(meta.get("notes", []))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str, results_root: str | None = None) -> None:
    """Measured (solid) vs FLOPs-ideal (dashed) TTFT and prefill speedups per method over the layer-averaged visual
    tokens; a third panel with accuracy vs TFLOPs when ``llava.eval.summarize`` results exist under ``results_root``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'vtc-toolkit[plot]'") from None
    accuracy = _accuracy_rows(results_root) if results_root else []
    panels = 3 if accuracy else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8), squeeze=False)
    by_method: dict[str, list[dict]] = {}
    batch = min(r["batch_size"] for r in results["rows"])
    for r in results["rows"]:
        if r["batch_size"] == batch and r.get("ttft_speedup") is not None and r["budget"] is not None:
            by_method.setdefault(r["method"], []).append(r)
    cmap = plt.get_cmap("tab20")
    for ax, key, label in ((axes[0, 0], "ttft", "time to first token"), (axes[0, 1], "prefill", "LLM prefill")):
        for i, (method, rows) in enumerate(sorted(by_method.items())):
            rows.sort(key=lambda r: r["avg_visual_tokens"])
            x = [r["avg_visual_tokens"] for r in rows]
            color = cmap(i % 20)
            ax.plot(x, [r[f"{key}_speedup"] for r in rows], marker="o", color=color, label=method)
            ax.plot(x, [r[f"{key}_speedup_ideal"] for r in rows], linestyle="--", color=color, alpha=0.7)
        ax.set_xlabel("layer-averaged visual tokens")
        ax.set_ylabel(f"{label} speedup vs unpruned")
        ax.set_title(f"{results['meta']['model']}, batch {batch}: {label} (dashed: FLOPs-ideal)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    if accuracy:
        ax = axes[0, 2]
        groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in accuracy:
            groups.setdefault((r["benchmark"], r["method"]), []).append(
                (r["tflops_per_sample"], r["ratio_to_baseline_pct"])
            )
        for i, ((bench, method), pts) in enumerate(sorted(groups.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=cmap(i % 20), label=f"{bench} {method}")
        ax.set_xlabel("prefill TFLOPs per sample (llava.bench.flops, full convention)")
        ax.set_ylabel("% of the unpruned score")
        ax.set_title("accuracy vs FLOPs (llava.eval.summarize results)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_rows(root: str) -> list[dict[str, Any]]:
    try:
        from llava.eval import summarize
    except ImportError:
        return []
    try:
        records, _ = summarize.collect(root)
    except summarize.SummarizeError:
        return []
    rows = summarize.build_rows(records, F.prefill_flops)
    return [r for r in rows if r["tflops_per_sample"] is not None and r["ratio_to_baseline_pct"] is not None]


# -- command line ----------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava.bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="llava-1.5-7b", help=f"one of {', '.join(available_geometries())}")
    p.add_argument("--model-path", help="a real checkpoint (llava.model.builder.load_pretrained_model) instead")
    p.add_argument("--layers", type=int, help="decoder layers to build (default: all)")
    p.add_argument("--vision-layers", type=int, help="vision encoder layers to build (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--dtype", default=None, help="bf16 (CPU default), fp16 (CUDA default) or fp32")
    p.add_argument("--methods", default="all", help="comma-separated method names or 'all'")
    p.add_argument("--tokens", type=_ints, default=[64, 128, 192], help="visual-token budgets per sample")
    p.add_argument("--batch-sizes", type=_ints, default=[1])
    p.add_argument("--repeats", type=int, help="timed runs per setting (default: 3 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed runs per setting (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default: 4 on CPU, 32 on CUDA)")
    p.add_argument("--text-tokens", type=int, default=F.TEXT_BEFORE_IMAGE + 25, help="text tokens per prompt")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 on CPU: stable on a shared machine)")
    p.add_argument("--shared-tower", action=argparse.BooleanOptionalAction, default=None,
                   help="time the unmodified vision tower once per batch size (default: on for CPU, off for CUDA)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help=f"drop to 1 repeat when the run would exceed this (default {CPU_MAX_MINUTES} on CPU)")
    p.add_argument("--clock", choices=sorted(CLOCKS),
                   help="'cpu': CPU time of the measuring thread (default on CPU with 1 thread: other processes on a "
                        "shared machine do not count); 'events': CUDA events, no host sync inside a timed region "
                        "(default on CUDA); 'wall': elapsed time (default otherwise)")
    p.add_argument("--no-attention-check", action="store_true", help="skip the attention guard in the warm-up run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--markdown", help="also write the table as markdown here")
    p.add_argument("--plot", help="draw speedups (and accuracy vs FLOPs, see --results-root) into this PNG")
    p.add_argument("--results-root", default="playground/data/eval",
                   help="llava.eval.summarize results root for the accuracy-vs-FLOPs panel (used when it exists)")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    cuda = str(args.device).startswith("cuda")
    settings = Settings(
        device=args.device,
        dtype=args.dtype or ("fp16" if cuda else "bf16"),
        threads=args.threads if args.threads is not None else (None if cuda else 1),
        repeats=args.repeats if args.repeats is not None else (10 if cuda else 3),
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 1),
        new_tokens=max(2, args.new_tokens if args.new_tokens is not None else (32 if cuda else 4)),
        text_tokens=args.text_tokens,
        batch_sizes=tuple(args.batch_sizes),
        shared_tower=args.shared_tower if args.shared_tower is not None else not cuda,
        max_seconds=60 * (args.max_minutes if args.max_minutes is not None else (None if cuda else CPU_MAX_MINUTES))
        if (args.max_minutes is not None or not cuda) else None,
        seed=args.seed,
        check_attention=not args.no_attention_check,
    )
    settings.clock = args.clock or ("events" if cuda else "cpu" if settings.threads == 1 else "wall")
    if settings.clock == "cpu" and (cuda or settings.threads != 1):
        raise BenchError("--clock cpu measures one thread's CPU time: use it on CPU with --threads 1")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    try:
        return _main(args, settings)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError("--device cuda was requested but no CUDA device is available")
        if settings.threads:
            torch.set_num_threads(settings.threads)
        dtype = torch_dtype(settings.dtype)
        methods = F.sweep_methods(args.methods)
        t = time.perf_counter()
        if args.model_path:
            from llava.model.builder import load_pretrained_model

            _, model, _, _ = load_pretrained_model(args.model_path, device=settings.device, dtype=dtype)
            full = geometry_from_hf_config(model.config, name=os.path.basename(os.path.normpath(args.model_path)))
            if args.layers:
                truncate_decoder(model, args.layers)
            geometry = geometry_from_hf_config(model.config, name=full.name)
            weights = f"checkpoint {args.model_path}"
        else:
            full = get_geometry(args.model_config)
            if full.is_qwen:
                raise BenchError(f"--model-config {full.name}: the latency harness builds LLaVA-shaped models only; "
                                 "for Qwen2.5-VL's FLOPs use python -m llava.bench.flops --model-config qwen2.5-vl-7b")
            changes = {}
            if args.layers:
                changes["llm_layers"] = args.layers
            if args.vision_layers:
                changes["vision_layers"] = args.vision_layers
            geometry = full.replace(**changes)
            model = build_random_model(geometry, dtype, settings.device, settings.seed)
            weights = "random weights"
        geometry = geometry.replace(text_tokens=settings.text_tokens)
        build_s = time.perf_counter() - t
        if settings.max_seconds is not None:  # the limit covers the whole command, model building included
            settings.max_seconds = max(30.0, settings.max_seconds - build_s)
        device_name = (torch.cuda.get_device_name(settings.device) if settings.device.startswith("cuda")
                       else f"CPU {platform.processor() or platform.machine()}")
        print(f"built {geometry.name} ({weights}) in {build_s:.1f} s; measuring {len(methods)} method(s)",
              file=sys.stderr)
        with torch.inference_mode():
            results = run_benchmark(model, geometry, methods, args.tokens, settings,
                                    log=lambda m: print(m, file=sys.stderr), full_llm_layers=full.llm_layers)
        meta = {
            "model": full.name,
            "full_llm_layers": full.llm_layers,
            "weights": weights,
            "geometry": geometry.to_dict(),
            "settings": settings.to_dict(),
            "device_name": device_name,
            "torch": torch.__version__,
            "build_s": round(build_s, 1),
            "reduced": any(n.startswith("time limit") for n in results["notes"]),
            "notes": results["notes"],
        }
        if not settings.device.startswith("cuda"):
            meta["notes"] = [
                f"CPU settings: {settings.repeats} repeat(s), {settings.warmup} warm-up run(s), {settings.new_tokens} "
                f"generated tokens, {settings.threads or torch.get_num_threads()} thread(s) (pass --repeats / "
                "--warmup / --new-tokens / --threads to change)",
                *meta["notes"],
            ]
        settings.threads = settings.threads or torch.get_num_threads()
        meta["settings"] = settings.to_dict()
        results["meta"] = meta
        text = header(meta) + "\n" + markdown(results)
        print(text, end="")
        print(f"(measured in {results['elapsed_s']:.0f} s)")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(_finite(results), indent=1, default=str), encoding="utf-8")
        if args.markdown:
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(text, encoding="utf-8")
        if args.plot:
            root = args.results_root if args.results_root and os.path.isdir(args.results_root) else None
            plot(results, args.plot, root)
    except (BenchError, F.FlopsError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _finite(x: Any) -> Any:
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


if __name__ == "__main__":
    _fix_malloc_for_rss()  # process-wide, so only when run as a program (CPU peak-memory sampling)
    sys.exit(main())
