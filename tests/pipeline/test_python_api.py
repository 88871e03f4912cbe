"""The README's Python API snippet, on the tiny checkpoint with a stock transformers LlavaProcessor."""

import os

import torch
from PIL import Image
from transformers import AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor

import llava.compression
from llava.mm_utils import build_image_processor


def _processor(ckpt: str) -> LlavaProcessor:
    return LlavaProcessor(image_processor=build_image_processor(), tokenizer=AutoTokenizer.from_pretrained(ckpt),
                          patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def test_readme_apply_snippet(tiny_hf, image_folder):
    processor = _processor(tiny_hf)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_hf).eval()
    other = LlavaForConditionalGeneration.from_pretrained(tiny_hf).eval()
    image = Image.open(os.path.join(image_folder, "img0.png"))
    prompt = "USER: <image>\nWhat is in the image? ASSISTANT:"
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 576

    with torch.no_grad():
        before = other.generate(**inputs, max_new_tokens=8, do_sample=False)
        model = llava.compression.apply(model, "fastervlm", visual_token_num=64)
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        trace = llava.compression.last_trace(model)
        assert out.shape[1] > inputs["input_ids"].shape[1]  # prompt + new tokens, as an unpatched model
        assert trace[0]["visual_tokens"] == 64 and len(trace[0]["kept_indices"]) == 64
        # the other model in the process is untouched
        assert torch.equal(other.generate(**inputs, max_new_tokens=8, do_sample=False), before)
        # keep-all equals the unmodified model; remove() restores it
        llava.compression.apply(model, "fastervlm", visual_token_num=576)
        assert torch.equal(model.generate(**inputs, max_new_tokens=8, do_sample=False), before)
        llava.compression.remove(model)
        assert torch.equal(model.generate(**inputs, max_new_tokens=8, do_sample=False), before)
