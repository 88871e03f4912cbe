"""``llm_kept_indices``: the visual tokens each pruning layer actually receives, recorded per image through the
evaluation path (``LlavaGenerator`` trace -> answer metadata), at batch size 3 with left padding."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

import llava.compression as vtc
from llava.eval import model_vqa_loader
from llava.eval.inference import GenerationSettings, LlavaGenerator
from llava.model.builder import load_pretrained_model
from tests.conftest import read_jsonl, write_vqa_questions

# three prompts of different lengths: the generator left-pads the shorter ones
MESSAGES = [
    "<image>\nWhat is in the picture?",
    "<image>\nDescribe the colours and the shapes that you can see in this image, one by one, in detail.",
    "<image>\nIs there a circle?",
]


@pytest.fixture(scope="module")
def loaded(tiny_hf, image_folder):
    tokenizer, model, processor, _ = load_pretrained_model(tiny_hf, device="cpu", dtype="float32")
    pixels = [
        processor(images=Image.open(os.path.join(image_folder, f"img{i}.png")).convert("RGB"), return_tensors="pt")[
            "pixel_values"
        ][0]
        for i in range(3)
    ]
    yield tokenizer, model, pixels
    vtc.remove(model)


class _Recorder:
    """Forward hooks on the decoder layers of the first (prefill) forward: layer inputs, outputs and masks."""

    def __init__(self, lm, layers):
        self.inputs, self.outputs, self.masks, self.handles = {}, {}, {}, []
        for k in layers:
            self.handles.append(lm.layers[k].register_forward_pre_hook(self._pre(k), with_kwargs=True))
            self.handles.append(lm.layers[k - 1].register_forward_hook(self._post(k - 1)))

    def _pre(self, k):
        def hook(module, args, kwargs):
            if args[0].shape[1] > 1 and k not in self.inputs:
                self.inputs[k], self.masks[k] = args[0].clone(), kwargs.get("attention_mask")

        return hook

    def _post(self, k):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.shape[1] > 1 and k not in self.outputs:
                self.outputs[k] = out.clone()

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _valid(mask, b, t):
    """``[B, T]`` attended slots of a layer's input, read from the last query row of its 4-D mask."""
    if mask is None:
        return torch.ones(b, t, dtype=torch.bool)
    last = mask[:, 0, -1, :]
    return last if last.dtype == torch.bool else last == 0


def _engine_kept(recorder, layers, visual_slots):
    """Per row: pruning layer -> the visual tokens its input holds, found by matching hidden-state vectors.

    The engine only gathers (copies) hidden states, so every kept token in layer K's input equals exactly one slot of
    layer K-1's output; merged tokens equal none. ``visual_slots[r]`` maps LLM-input slots to visual-token indices.
    """
    result = []
    for r, slots in enumerate(visual_slots):
        slot_to_visual = dict(slots)
        kept = {}
        for k in layers:
            inp, out = recorder.inputs[k][r], recorder.outputs[k - 1][r]
            valid = _valid(recorder.masks[k], *recorder.inputs[k].shape[:2])[r]
            new_map = {}
            for j in torch.nonzero(valid).flatten().tolist():
                match = torch.nonzero((out == inp[j]).all(dim=-1)).flatten().tolist()
                visual = slot_to_visual.get(match[0]) if match else -1  # no match: a token merged here
                if visual is not None:
                    new_map[j] = visual  # merged tokens (-1) stay visual tokens in later layers
            found = list(new_map.values())
            kept[str(k)] = sorted(v for v in found if v >= 0) + [-1] * found.count(-1)
            slot_to_visual = new_map
        result.append(kept)
    return result


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("fastv", dict(fastv_k=2)),
        ("dart", dict(dart_k=1, visual_token_num=64)),
        ("pdrop", dict(pdrop_layers="1,3", pdrop_lambda=0.5)),
        ("sparsevlm", dict(sparsevlm_layers="0,2", sparsevlm_counts="200,50", sparsevlm_recycle=False)),
        ("sparsevlm", dict(sparsevlm_layers="0,2", sparsevlm_counts="200,50")),
        ("ficoco-l", dict(ficoco_start_layer=2, visual_token_num=64)),
    ],
)
@torch.inference_mode()
def test_llm_kept_indices_are_what_the_engine_kept_at_batch_3(loaded, method, kwargs):
    tokenizer, model, pixels = loaded
    vtc.apply(model, method, **kwargs)
    layers = vtc.applied_config(model).prune_layers(vtc.model_geometry(model))
    lm = model.model.language_model
    recorder = _Recorder(lm, layers)
    captured_ids = {}

    def keep_ids(module, args, kwargs):
        captured_ids.setdefault("ids", kwargs.get("input_ids"))

    ids_hook = model.model.register_forward_pre_hook(keep_ids, with_kwargs=True)
    try:
        generator = LlavaGenerator(tokenizer, model, save_kept_tokens=True)
        results = generator.generate(MESSAGES, pixels, GenerationSettings(max_new_tokens=2))
    finally:
        recorder.close()
        ids_hook.remove()
    ids = captured_ids["ids"]
    assert (ids == tokenizer.pad_token_id).any(dim=1).sum() == 2  # two rows are left-padded
    visual_slots = []
    for r in range(ids.shape[0]):
        cols = torch.nonzero(ids[r] == model.config.image_token_id).flatten().tolist()
        visual_slots.append([(c, i) for i, c in enumerate(cols)])
    expected = _engine_kept(recorder, layers, visual_slots)
    recorded = [res.trace["llm_kept_indices"] for res in results]
    got = [{k: [max(i, -1) for i in kept] for k, kept in row.items()} for row in recorded]  # merged: -1 - i
    # SparseVLM's recycled tokens and FiCoCo-L's preserved tokens (it returns them all as merged) are new tokens
    recycling = method == "ficoco-l" or (method == "sparsevlm" and kwargs.get("sparsevlm_recycle", True))
    if not recycling:
        assert got == expected
    else:
        # a one-member cluster's mean *is* that token's hidden state, so matching by value may take a recycled token
        # for a kept one: every recorded token must be matched, and the rest of the matches are such copies
        for row_got, row_expected in zip(got, expected):
            for k, kept in row_got.items():
                matched, in_trace = set(row_expected[k]) - {-1}, set(kept) - {-1}
                assert in_trace <= matched and len(kept) == len(row_expected[k])
                assert len(matched - in_trace) == kept.count(-1) - row_expected[k].count(-1)
    for res in results:
        counts = res.trace["visual_tokens_per_layer"]
        assert all(len(res.trace["llm_kept_indices"][str(k)]) == counts[k] for k in layers)
        for kept in res.trace["llm_kept_indices"].values():  # merged tokens stand for one of the image's tokens
            assert all(-576 - 1 <= i < 576 for i in kept)
    assert any(-1 in kept for row in got for kept in row.values()) == recycling
    if method == "ficoco-l":  # every token is a preserved token standing at its own place: distinct stand-ins
        assert all(len(set(kept)) == len(kept) and max(kept) < 0 for row in recorded for kept in row.values())
    # the same rows one at a time record the same tokens (batch 3 == 3 single runs)
    for i in range(3):
        (single,) = generator.generate([MESSAGES[i]], [pixels[i]], GenerationSettings(max_new_tokens=2))
        assert single.trace["llm_kept_indices"] == recorded[i]
    # without --save-kept-tokens the indices stay out of the trace (the counts stay)
    quiet = LlavaGenerator(tokenizer, model).generate(MESSAGES[:1], pixels[:1], GenerationSettings(max_new_tokens=1))
    assert "llm_kept_indices" not in quiet[0].trace and "visual_tokens_per_layer" in quiet[0].trace


def test_answer_metadata_carries_llm_kept_indices(tiny_hf, image_folder, tmp_path):
    questions = write_vqa_questions(os.path.join(tmp_path, "q.jsonl"), 3)

    def run(answers, *extra):
        model_vqa_loader.main(["--model-path", tiny_hf, "--question-file", questions, "--image-folder", image_folder,
                               "--answers-file", answers, "--num-workers", "0", "--max_new_tokens", "2",
                               "--method", "fastv", *extra])
        return [a["metadata"] for a in read_jsonl(answers)]

    batched = run(str(tmp_path / "b.jsonl"), "--batch-size", "3", "--save-kept-tokens")
    single = run(str(tmp_path / "s.jsonl"), "--save-kept-tokens")
    assert [m["llm_kept_indices"] for m in batched] == [m["llm_kept_indices"] for m in single]
    for meta in batched:
        kept = meta["llm_kept_indices"]["2"]
        assert len(kept) == 288 and kept == sorted(kept) and 0 <= kept[0] and kept[-1] < 576
    assert all("llm_kept_indices" not in m for m in run(str(tmp_path / "n.jsonl")))
