"""The compressed prefill never waits for the device: no host synchronisation on the hot path of FastV (the in-LLM
engine) and FasterVLM (the vision-side reduce), counted on CPU.

A :class:`~torch.overrides.TorchFunctionMode` records every call that would make the host wait for a GPU (reading
a value: ``item`` / ``tolist`` / ``bool`` / ``int`` / ``float`` / ``index``, copying to the host, ``nonzero`` /
``unique`` / boolean-mask indexing, whose output sizes depend on the data, ...). It is active only on the hot path:
from the first decoder layer's hook of the prefill to the logits (plus, for FasterVLM, the reduce and projection
after the tower). The placeholder layout read from ``input_ids`` before the forward is outside it, by design.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

import llava.compression as vtc
from llava.compression.families import llava as llava_family
from tests.llm.conftest import checkpoint_inputs

# calls that return host values or device-data-dependent shapes (a device sync on a GPU)
_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__index__,
    torch.Tensor.__float__, torch.Tensor.__format__, torch.Tensor.__repr__, torch.Tensor.cpu, torch.Tensor.numpy,
    torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere, torch.unique, torch.Tensor.unique,
    torch.unique_consecutive, torch.masked_select, torch.Tensor.masked_select, torch.equal, torch.Tensor.equal,
    torch.is_nonzero, torch.Tensor.is_nonzero,
}


def _is_sync(func, args, kwargs) -> bool:
    tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if tensor is not None and tensor.device.type == "meta":
        return False
    if func in _READS:
        return True
    if func is torch.Tensor.__getitem__:  # boolean-mask indexing: a data-dependent output size
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    if func is torch.Tensor.__setitem__:  # a Python value written through a tensor index: copied from pageable
        index = args[1] if isinstance(args[1], tuple) else (args[1],)  # host memory (CUDA waits; found on an H100)
        return any(isinstance(i, torch.Tensor) for i in index) and not isinstance(args[2], torch.Tensor)
    if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None
    if func is torch.Tensor.to:  # an explicit copy to the host (on CPU, `.to(x.device)` cannot be told apart)
        return any(t == "cpu" for t in (*args[1:], kwargs.get("device")) if isinstance(t, str))
    return False


class SyncRecorder(TorchFunctionMode):
    """Records (name, caller) of every host-syncing call made while it is active; counts all calls seen."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls += 1
        if _is_sync(func, args, kwargs):
            frame = next(
                (f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename),
                None,
            )
            where = f"{frame.filename.rsplit('/', 3)[-1]}:{frame.lineno} {frame.line}" if frame else "?"
            self.syncs.append(f"{getattr(func, '__qualname__', func)} at {where}")
        return func(*args, **kwargs)


class HotPath:
    """Activates a :class:`SyncRecorder` from the first decoder layer's pre-hook of the first forward (the prefill)
    to the LM head's output (the logits), and around ``extra`` module functions (e.g. the vision-side reduce)."""

    def __init__(self, model, monkeypatch, extra: tuple[str, ...] = ()):
        self.recorder = SyncRecorder()
        self.prefills = 0
        self._active = False
        lm = model.model.language_model
        # prepend: before the engine's own layer hook, which starts the pruned prefill
        self._handles = [
            lm.layers[0].register_forward_pre_hook(self._enter, prepend=True),
            model.lm_head.register_forward_hook(self._exit),
        ]
        for name in extra:
            monkeypatch.setattr(llava_family, name, self._recorded(getattr(llava_family, name)))

    def _enter(self, module, args) -> None:
        if self.prefills == 0:
            self.recorder.__enter__()
            self._active = True
        self.prefills += 1

    def _exit(self, module, args, output) -> None:
        if self._active:
            self._active = False
            self.recorder.__exit__(None, None, None)

    def _recorded(self, function):
        def wrapper(*args, **kwargs):
            with self.recorder:
                return function(*args, **kwargs)

        return wrapper

    def close(self) -> None:
        if self._active:
            self.recorder.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()


@pytest.mark.parametrize(
    ("method", "options", "extra"),
    [
        ("fastv", {"visual_token_num": 64}, ()),
        ("fastervlm", {"visual_token_num": 64}, ("reduce_and_project",)),
    ],
    ids=["fastv@64", "fastervlm@64"],
)
@pytest.mark.parametrize("batch_size", [1, 2], ids=["batch1", "batch2-left-padded"])
@torch.inference_mode()
def test_compressed_prefill_makes_no_host_sync(checkpoint_model, monkeypatch, method, options, extra, batch_size):
    inputs = checkpoint_inputs(checkpoint_model, batch_size)
    vtc.apply(checkpoint_model, method, **options)
    hot = HotPath(checkpoint_model, monkeypatch, extra)
    try:
        out = checkpoint_model.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        hot.close()
    assert hot.prefills == 2 and hot.recorder.calls > 100  # the prefill and one decode step ran, and were watched
    assert hot.recorder.syncs == [], "host syncs on the hot path:\n" + "\n".join(hot.recorder.syncs)
    # the pruning happened (the trace is read afterwards, outside the hot path)
    trace = getattr(out, "llm_compression_trace", None) or getattr(out, "compression_trace", None)
    counts = [t["visual_tokens_per_layer"][-1] for t in trace] if method == "fastv" else [
        t["visual_tokens"] for t in trace
    ]
    assert counts == [64] * batch_size


class CudaSyncGuard:
    """On a GPU: ``torch.cuda.set_sync_debug_mode("error")`` from the first decoder layer's pre-hook of the prefill to
    the logits (and around ``extra`` module functions), so any synchronising CUDA call there raises."""

    def __init__(self, model, monkeypatch, extra: tuple[str, ...] = ()):
        self.prefills = 0
        lm = model.model.language_model
        self._handles = [
            lm.layers[0].register_forward_pre_hook(self._enter, prepend=True),
            model.lm_head.register_forward_hook(self._exit),
        ]
        for name in extra:
            monkeypatch.setattr(llava_family, name, self._guarded(getattr(llava_family, name)))

    def _enter(self, module, args) -> None:
        if self.prefills == 0:
            torch.cuda.set_sync_debug_mode("error")
        self.prefills += 1

    def _exit(self, module, args, output) -> None:
        torch.cuda.set_sync_debug_mode(0)

    def _guarded(self, function):
        def wrapper(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(0)

        return wrapper

    def close(self) -> None:
        torch.cuda.set_sync_debug_mode(0)
        for handle in self._handles:
            handle.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA's own sync detection")
@pytest.mark.parametrize(
    ("method", "extra"), [("fastv", ()), ("fastervlm", ("reduce_and_project",))], ids=["fastv@64", "fastervlm@64"]
)
@pytest.mark.parametrize("batch_size", [1, 2], ids=["batch1", "batch2-left-padded"])
@torch.inference_mode()
def test_compressed_prefill_makes_no_cuda_sync(monkeypatch, method, extra, batch_size):
    """The same hot path on a GPU, checked by CUDA itself (``set_sync_debug_mode("error")``)."""
    from transformers import LlavaForConditionalGeneration

    from llava.model.tiny import build_llava_config, build_tiny_state_dict

    config = build_llava_config()
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.load_state_dict(build_tiny_state_dict(0))
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = None
    model = model.eval().to("cuda")
    inputs = {k: v.to("cuda") for k, v in checkpoint_inputs(model, batch_size).items()}
    vtc.apply(model, method, visual_token_num=64)
    guard = CudaSyncGuard(model, monkeypatch, extra)
    try:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        guard.close()
    assert guard.prefills == 2
    trace = getattr(out, "llm_compression_trace", None) or getattr(out, "compression_trace", None)
    counts = [t["visual_tokens_per_layer"][-1] for t in trace] if method == "fastv" else [
        t["visual_tokens"] for t in trace
    ]
    assert counts == [64] * batch_size
