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


# -- the README's Python API example, run as written (issue 12 item 12) -----------------------------------------

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def readme_python_example() -> str:
    """The first ``python`` block of the README section "Python API for your own LlavaForConditionalGeneration"."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("Python API for your own `LlavaForConditionalGeneration`") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


def test_readme_python_example_answers_as_the_evaluation(tiny_hf, image_folder, tmp_path):
    import json

    from llava.compression import applied_config
    from llava.eval import model_vqa_loader
    from llava.eval.inference import LlavaGenerator
    from llava.mm_utils import load_image, tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    from tests.conftest import read_jsonl

    image = os.path.join(image_folder, "img0.png")  # 500 x 333: a centre crop would cut its borders
    code = readme_python_example()
    for placeholder, value in (('"checkpoints/tiny-llava"', repr(tiny_hf)), ('"cat.jpg"', repr(image))):
        assert placeholder in code
        code = code.replace(placeholder, value)
    example: dict = {}
    exec(compile(code, "README.md", "exec"), example)

    # the evaluation's own preprocessing of the same image and question
    tokenizer, model, image_processor, _ = load_pretrained_model(tiny_hf, device="cpu")
    prompt = LlavaGenerator(tokenizer, model).build_prompt("<image>\n" + example["question"])
    assert example["prompt_ids"] == tokenizer_image_token(prompt, tokenizer, model.config.image_token_id, 576)
    expected_pixels = image_processor(load_image(image), return_tensors="pt")["pixel_values"]
    assert torch.equal(example["pixel_values"], expected_pixels)
    assert applied_config(example["model"]).name == "none"  # removed at the end, as the example says

    # and the evaluation's answer with the same method and budget
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "image": "img0.png", "text": example["question"]}) + "\n")
    answers = str(tmp_path / "a.jsonl")
    model_vqa_loader.main(["--model-path", tiny_hf, "--question-file", str(questions), "--image-folder", image_folder,
                           "--answers-file", answers, "--num-workers", "0", "--max_new_tokens", "32",
                           "--method", "fastervlm", "--visual-token-num", "64"])
    assert example["answer"] and example["answer"] == read_jsonl(answers)[0]["text"]


def test_autoprocessor_loads_the_tiny_checkpoint(tiny_hf, image_folder):
    """The tiny llava-hf layout carries llava-hf's processor_config.json, so AutoProcessor gives 576 image tokens."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_hf)
    image = Image.open(os.path.join(image_folder, "img1.png"))
    inputs = processor(images=image, text="USER: <image>\nWhat is this? ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == 448).sum()) == 576
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
