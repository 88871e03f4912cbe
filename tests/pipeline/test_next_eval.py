"""The image evaluation entry points on the tiny LLaVA-NeXT (LLaVA-1.6) checkpoint: anyres preprocessing, a batch of
images with different aspect ratios (hence crop counts) equal to single runs, the fixed 2880-style grid, the
LLaVA-1.6 prompt templates."""

import pytest

from llava.compression.families.anyres import image_token_count
from llava.conversation import build_prompt
from llava.eval import model_vqa_loader
from llava.model.builder import load_pretrained_model
from tests.conftest import IMAGE_SIZES, read_jsonl


def _run(ckpt, questions, images, answers, *extra):
    model_vqa_loader.main(["--model-path", ckpt, "--question-file", questions, "--image-folder", images,
                           "--answers-file", answers, "--num-workers", "0", "--max_new_tokens", "6", *extra])
    return read_jsonl(answers)


def _expected_tokens(ckpt: str, mode: str) -> list[int]:
    _, model, _, _ = load_pretrained_model(ckpt, device="cpu", next_grid=mode)
    vc = model.config.vision_config
    pinpoints = model.config.image_grid_pinpoints  # as loaded: an original checkpoint's pairs come swapped
    return [image_token_count((h, w), mode=mode, pinpoints=pinpoints, crop_size=vc.image_size,
                              patch_size=vc.patch_size) for (w, h) in IMAGE_SIZES]


def test_next_batch_of_mixed_aspect_ratios_equals_single_runs(tiny_next_hf, vqa_questions, image_folder, tmp_path):
    single = _run(tiny_next_hf, vqa_questions, image_folder, str(tmp_path / "b1.jsonl"))
    batched = _run(tiny_next_hf, vqa_questions, image_folder, str(tmp_path / "b6.jsonl"), "--batch-size", "6")
    assert [a["text"] for a in batched] == [a["text"] for a in single]
    tokens = [a["metadata"]["visual_tokens"] for a in single]
    assert tokens == [a["metadata"]["visual_tokens"] for a in batched]
    assert tokens == _expected_tokens(tiny_next_hf, "anyres")
    assert len(set(tokens)) > 1  # the aspect ratios give different counts
    assert single[0]["metadata"]["run"]["next_grid"] == "anyres"


def test_next_fixed_grid_gives_five_crops_per_image(tiny_next_hf, vqa_questions, image_folder, tmp_path):
    answers = _run(tiny_next_hf, vqa_questions, image_folder, str(tmp_path / "f.jsonl"), "--next-grid", "fixed-672",
                   "--batch-size", "3")
    tokens = [a["metadata"]["visual_tokens"] for a in answers]
    _, model, _, _ = load_pretrained_model(tiny_next_hf, device="cpu")
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert tokens == [5 * side * side] * len(IMAGE_SIZES)
    assert answers[0]["metadata"]["run"]["next_grid"] == "fixed-672"


def test_next_original_layout_runs_with_its_own_token_counts(tiny_next_original, vqa_questions, image_folder,
                                                             tmp_path):
    orig = _run(tiny_next_original, vqa_questions, image_folder, str(tmp_path / "or.jsonl"), "--batch-size", "3")
    assert [a["metadata"]["visual_tokens"] for a in orig] == _expected_tokens(tiny_next_original, "anyres")


def test_fixed_grid_on_llava_15_is_one_clear_line(tiny_hf, vqa_questions, image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(tiny_hf, vqa_questions, image_folder, str(tmp_path / "x.jsonl"), "--next-grid", "fixed-672")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--next-grid" in err and "LLaVA-NeXT" in err


def test_mistral_instruct_prompt_is_llava_16_mistral_template():
    assert build_prompt("What is it?", "mistral_instruct") == "[INST] <image>\nWhat is it? [/INST]"
    assert build_prompt("What is it?", "mistral_instruct", with_image=False) == "[INST] What is it? [/INST]"


def test_a_method_on_next_goes_to_the_family_which_answers_in_one_line(tiny_next_hf, vqa_questions, image_folder,
                                                                      tmp_path, capsys):
    from llava.compression.families import get_family
    from llava.compression.registry import get_method

    refusal = get_family("llava-next").refusal(get_method("fastervlm"))
    args = ("--method", "fastervlm", "--visual-token-num", "8")
    if refusal is None:  # integrated: the run compresses every crop
        answers = _run(tiny_next_hf, vqa_questions, image_folder, str(tmp_path / "m.jsonl"), *args)
        assert all(a["metadata"]["method"] == "fastervlm" for a in answers)
        return
    with pytest.raises(SystemExit) as exc:
        _run(tiny_next_hf, vqa_questions, image_folder, str(tmp_path / "m.jsonl"), *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and "fastervlm" in errors[0]


def test_resume_with_the_other_grid_is_refused(tiny_next_hf, vqa_questions, image_folder, tmp_path, capsys):
    answers_file = str(tmp_path / "g.jsonl")
    first = _run(tiny_next_hf, vqa_questions, image_folder, answers_file, "--batch-size", "6")
    with pytest.raises(SystemExit) as exc:
        _run(tiny_next_hf, vqa_questions, image_folder, answers_file, "--next-grid", "fixed-672")
    assert exc.value.code == 2 and "next_grid" in capsys.readouterr().err
    assert read_jsonl(answers_file) == first


def test_global_budget_mode_reaches_the_family_and_is_part_of_the_run(tiny_next_hf, vqa_questions, image_folder,
                                                                      tmp_path, capsys):
    """``--budget-mode global``: each image keeps T x crops tokens chosen over all its crops (the family's trace says
    so), the run records it, and a resume with the default (per crop) is refused."""
    answers_file = str(tmp_path / "gl.jsonl")
    args = ("--method", "fastervlm", "--visual-token-num", "8", "--batch-size", "3")
    answers = _run(tiny_next_hf, vqa_questions, image_folder, answers_file, *args, "--budget-mode", "global")
    assert all(a["metadata"]["budget_mode"] == "global" for a in answers)
    assert answers[0]["metadata"]["run"]["budget_mode"] == "global"
    per_crop = _run(tiny_next_hf, vqa_questions, image_folder, str(tmp_path / "pc.jsonl"), *args)
    assert all(a["metadata"]["budget_mode"] == "per-crop" for a in per_crop)
    assert "budget_mode" not in per_crop[0]["metadata"]["run"]
    with pytest.raises(SystemExit) as exc:
        _run(tiny_next_hf, vqa_questions, image_folder, answers_file, *args)
    assert exc.value.code == 2 and "budget_mode" in capsys.readouterr().err
    assert read_jsonl(answers_file) == answers


@pytest.mark.parametrize("ckpt, method, needle", [
    ("tiny_next_hf", "vtc-cls", "fastervlm only"),
    ("tiny_hf", "fastervlm", "LLaVA-NeXT checkpoints only"),
])
def test_global_budget_mode_refusals_are_one_line_before_loading(ckpt, method, needle, request, vqa_questions,
                                                                 image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(request.getfixturevalue(ckpt), vqa_questions, image_folder, str(tmp_path / "r.jsonl"),
             "--method", method, "--visual-token-num", "8", "--budget-mode", "global")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err and "--budget-mode" in err
    assert not (tmp_path / "r.jsonl").exists()
