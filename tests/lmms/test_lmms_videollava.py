"""``vtc_videollava`` in process on the tiny Video-LLaVA: answers equal the video QA generator's, per-frame budgets are
logged, loglikelihood equals a plain forward of the unmodified model, and bad video options are one line."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is installed by `make install` (requirements-lmms.txt)")
pytest.importorskip("av", reason="the test videos are written with PyAV")

from lmms_eval.api.instance import Instance  # noqa: E402

from llava.eval.inference import GenerationSettings  # noqa: E402
from llava.eval.lmms_plugin.base import ModelArgsExit  # noqa: E402
from llava.mm_utils import tokenizer_image_token  # noqa: E402
from tests.video.conftest import write_video  # noqa: E402
from videollava.eval.lmms_video_plugin import VTCVideoLlava  # noqa: E402
from videollava.model.tiny import TinyVideoGeometry, write_original_layout  # noqa: E402

G = TinyVideoGeometry(vision_layers=4, text_layers=2)
QUESTIONS = ["What happens in the video?", "Is anything moving?", "What colour is the screen?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lmms_video")
    checkpoint = write_original_layout(str(folder / "Video-LLaVA-tiny"), seed=0, temporal="random", g=G)
    videos = [str(write_video(folder / f"clip{n}.mp4", n)) for n in (12, 20)]
    docs = [{"video": videos[i % 2], "question": q} for i, q in enumerate(QUESTIONS)]
    return checkpoint, docs


def doc_to_visual(doc):
    return [doc["video"]]


def build(checkpoint, docs, **model_args) -> VTCVideoLlava:
    model = VTCVideoLlava(pretrained=checkpoint, device="cpu", **model_args)
    model.task_dict = {"t": {"test": docs}}
    return model


def request(kind: str, doc_id: int, docs, second) -> Instance:
    return Instance(request_type=kind, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1},
                    arguments=(docs[doc_id]["question"], second, doc_to_visual, doc_id, "t", "test"))


def test_answers_equal_the_video_qa_generator_and_log_per_frame_budgets(setup):
    checkpoint, docs = setup
    model = build(checkpoint, docs, method="fastervlm", visual_token_num=4, batch_size=2)
    results = model.generate_until([request("generate_until", i, docs, {"max_new_tokens": 4}) for i in range(3)])
    expected = model.generator.generate([d["question"] for d in docs], [model.processor(d["video"]) for d in docs],
                                        GenerationSettings(max_new_tokens=4))
    assert [r.text for r in results] == [e.text for e in expected]
    for result in results:
        counts = result.token_counts.to_dict()
        assert counts["visual_tokens"] == 8 * 4 and counts["tokens_per_frame"] == [4] * 8


def test_loglikelihood_equals_a_forward_of_the_unmodified_model(setup):
    checkpoint, docs = setup
    model = build(checkpoint, docs, method="none")
    (result,) = model.loglikelihood([request("loglikelihood", 2, docs, " blue")])
    mean_nll, _ = result.text
    frames = model.processor(docs[2]["video"])
    prompt = model.generator.build_prompt(docs[2]["question"])
    video_id, per_frame = model.model.config.video_token_id, result.token_counts.to_dict()["tokens_per_frame"]
    context = tokenizer_image_token(prompt, model.tokenizer, video_id, per_frame)
    full = tokenizer_image_token(prompt + " blue", model.tokenizer, video_id, per_frame)
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([full]), pixel_values_videos=frames[None]).logits[0].float()
    targets = torch.tensor(full[len(context):])
    log_probs = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
    assert mean_nll == pytest.approx(-log_probs.gather(1, targets[:, None]).mean().item(), abs=1e-5)


@pytest.mark.parametrize("model_args, expected", [
    ({"method": "vtc-cls", "visual_token_num": 4, "budget_mode": "global"}, "global is implemented for fastervlm only"),
    ({"method": "tome", "visual_token_num": 4}, "on Video-LLaVA only pre-LLM methods"),
    ({"method": "fastervlm", "visual_token_num": 4, "budget_mode": "all"}, "invalid choice: 'all'"),
])
def test_bad_video_options_are_one_line_before_loading(setup, monkeypatch, capsys, model_args, expected):
    checkpoint, docs = setup
    monkeypatch.setattr(VTCVideoLlava, "load", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(ModelArgsExit):
        build(checkpoint, docs, **model_args)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
