"""Tiny, deterministic copies of every LLaVA-1.5 image benchmark in its real on-disk format.

    python -m llava.data.mini --out DIR [--benchmarks pope,mme,...] [--reference-answers]

``DIR`` takes the place of ``playground/data/eval``: each benchmark gets its usual folder
(``DIR/scienceqa``, ``DIR/MME``, ``DIR/seed_bench``, ...; see ``llava.eval.benchmarks.TASKS``) with a
few questions, PIL-drawn images, question files and annotation files laid out exactly as the real
data, so every inference entry point and scorer can run end to end on a tiny model. The whole tree
is well under 1 MB; running twice gives byte-identical files.

Beyond the real layout, VQAv2 and VizWiz get an ``annotations_mini.json`` (official annotation
format, answers for the mini test questions) so that their optional local accuracy can be exercised.
Question ids follow the real files' types and patterns; their values are illustrative.
``--reference-answers`` (or :func:`write_reference_answers`) also writes
``<bench>/answers/reference.jsonl``: answers in LLaVA's schema holding the ground truth, which the
scorers must rate 100 % (MME: 200 per subtask) - a model-free end-to-end check of the scorers.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
VIZWIZ = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
YES_NO = " Please answer yes or no."

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
          "white": (245, 245, 245), "black": (15, 15, 15)}


# --- drawing ---------------------------------------------------------------------------------------


def draw(size: tuple[int, int], shapes: Sequence[tuple[str, str]], background: str = "white") -> Image.Image:
    """An image of ``size`` with the given (shape, colour) pairs laid out left to right."""
    img = Image.new("RGB", size, COLORS[background] if background in COLORS else (200, 200, 200))
    d = ImageDraw.Draw(img)
    w, h = size
    n = max(1, len(shapes))
    for i, (shape, color) in enumerate(shapes):
        x0, x1 = int(w * i / n) + 2, int(w * (i + 1) / n) - 2
        y0, y1 = h // 5, h - h // 5
        fill = COLORS[color]
        if shape == "circle":
            d.ellipse([x0, y0, x1, y1], fill=fill)
        elif shape == "triangle":
            d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill)
        else:
            d.rectangle([x0, y0, x1, y1], fill=fill)
    return img


def save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, format="JPEG", quality=85)
    else:
        img.save(path, format="PNG")


def b64png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, records: Sequence[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(str(r.get(c, "")) for c in header) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def ten(*pairs: tuple[str, int]) -> list[str]:
    """Ten annotator answers from (answer, count) pairs."""
    out = [a for a, k in pairs for _ in range(k)]
    assert len(out) == 10, out
    return out


# --- benchmarks ------------------------------------------------------------------------------------


def make_vqav2(root: Path) -> None:
    items = [  # (qid, image no, shapes, question, 10 answers)
        (1000, 1, [("square", "red")], "What color is the square?", ten(("red", 9), ("orange", 1))),
        (1001, 1, [("square", "red")], "How many squares are there?", ten(("1", 6), ("one", 3), ("2", 1))),
        (2000, 2, [("circle", "blue"), ("circle", "blue")], "Are there two circles?", ten(("yes", 10))),
        (3000, 3, [("triangle", "green")], "What shape is shown?", ten(("triangle", 8), ("a triangle", 2))),
    ]
    test_std_only = [(4000, 3, "Is the background white?"), (4001, 3, "What is the main color?")]
    questions, annotations = [], []
    for qid, no, shapes, q, answers in items:
        name = f"COCO_test2015_{no:012d}.jpg"
        save(draw((64 + 8 * no, 48), shapes), root / "test2015" / name)
        questions.append({"question_id": qid, "image": name, "text": q + SHORT, "category": "default"})
        annotations.append({"question_id": qid, "image_id": no, "question_type": "what",
                            "answer_type": "other", "multiple_choice_answer": answers[0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(answers)]})
    full = questions + [{"question_id": qid, "image": f"COCO_test2015_{no:012d}.jpg", "text": q + SHORT,
                         "category": "default"} for qid, no, q in test_std_only]
    write_jsonl(root / "llava_vqav2_mscoco_test-dev2015.jsonl", questions)
    write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", full)
    write_json(root / "annotations_mini.json", {"annotations": annotations})


def make_gqa(root: Path) -> None:
    items = [  # (qid, image, shapes, question, answer, structural, semantic)
        ("20000001", "n100001", [("square", "red")], "What color is the square?", "red", "query", "attr"),
        ("20000002", "n100001", [("square", "red")], "Is the square red?", "yes", "verify", "attr"),
        ("20000003", "n100002", [("circle", "blue"), ("square", "green")],
         "Which shape is to the left of the square?", "circle", "query", "rel"),
        ("20000004", "n100002", [("circle", "blue"), ("square", "green")],
         "Are there both circles and triangles?", "no", "logical", "obj"),
    ]
    questions, official = [], {}
    seen = set()
    for qid, image, shapes, q, ans, structural, semantic in items:
        if image not in seen:
            save(draw((72, 56), shapes), root / "data" / "images" / f"{image}.jpg")
            seen.add(image)
        questions.append({"question_id": qid, "image": f"{image}.jpg", "text": q + SHORT, "category": "default"})
        official[qid] = {"semantic": [], "entailed": [], "equivalent": [qid], "question": q, "imageId": image,
                         "isBalanced": True, "groups": {"global": None, "local": None}, "answer": ans,
                         "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                         "types": {"structural": structural, "semantic": semantic, "detailed": semantic},
                         "fullAnswer": ans}
    write_jsonl(root / "llava_gqa_testdev_balanced.jsonl", questions)
    write_json(root / "data" / "testdev_balanced_questions.json", official)


def make_vizwiz(root: Path) -> None:
    items = [
        (0, [("square", "yellow")], "What color is this?", ten(("yellow", 10))),
        (1, [("circle", "black")], "What is this?", ten(("unanswerable", 7), ("circle", 3))),
        (2, [("triangle", "green"), ("triangle", "green")], "How many are there?", ten(("2", 5), ("two", 5))),
    ]
    questions, test, annotations = [], [], []
    for qid, shapes, q, answers in items:
        name = f"VizWiz_test_{qid:08d}.jpg"
        save(draw((80, 60 + 4 * qid), shapes, background="black" if qid == 1 else "white"), root / "test" / name)
        questions.append({"question_id": qid, "image": name, "text": q + VIZWIZ, "category": "default"})
        test.append({"image": name, "question": q})
        annotations.append({"image": name, "question": q, "answerable": int(answers[0] != "unanswerable"),
                            "answer_type": "other",
                            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]})
    write_jsonl(root / "llava_test.jsonl", questions)
    write_json(root / "test.json", test)
    write_json(root / "annotations_mini.json", annotations)


def make_scienceqa(root: Path) -> None:
    # (pid, has image, hint, question, choices, answer idx, subject, grade)
    items = [
        ("1", True, "", "Which shape is red?", ["the circle", "the square"], 1, "natural science", "grade2"),
        ("2", True, "The picture shows a tiny map.", "Which color is used most?", ["blue", "green", "red"], 0,
         "social science", "grade5"),
        ("3", False, "", "Which word would you find on a dictionary page with the guide words cat - dog?",
         ["cow", "egg"], 0, "language science", "grade3"),
        ("4", False, "Ann has two apples and gets one more.", "How many apples does Ann have now?",
         ["two", "three", "four", "five"], 1, "natural science", "grade8"),
        ("5", True, "", "What is the shape on the left?", ["a triangle", "a circle", "a square"], 2,
         "natural science", "grade9"),
    ]
    shapes = {"1": [("circle", "blue"), ("square", "red")], "2": [("square", "blue"), ("square", "blue")],
              "5": [("square", "green"), ("circle", "yellow")]}
    problems, llava = {}, []
    for pid, has_image, hint, q, choices, ans, subject, grade in items:
        problems[pid] = {"question": q, "choices": choices, "answer": ans, "hint": hint,
                         "image": "image.png" if has_image else None, "task": "closed choice", "grade": grade,
                         "subject": subject, "topic": "mini", "category": "mini", "skill": "mini",
                         "lecture": "", "solution": "", "split": "test"}
        value = (f"Context: {hint}\n" if hint else "") + q + "".join(
            f"\n{chr(65 + i)}. {c}" for i, c in enumerate(choices))
        rec: dict[str, Any] = {"id": pid}
        if has_image:
            save(draw((60 + 10 * int(pid), 40), shapes[pid]), root / "images" / "test" / pid / "image.png")
            rec["image"] = f"{pid}/image.png"
            value = "<image>\n" + value
        rec["conversations"] = [{"from": "human", "value": value}, {"from": "gpt", "value": chr(65 + ans)}]
        llava.append(rec)
    write_json(root / "llava_test_CQM-A.json", llava, indent=2)
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"train": [], "val": [], "test": [p[0] for p in items],
                                          "minival": [], "minitest": []})


def make_textvqa(root: Path) -> None:
    images = {"0a1b2c3d4e5f6a7b": [("square", "red")], "1b2c3d4e5f6a7b8c": [("circle", "blue")],
              "2c3d4e5f6a7b8c9d": [("triangle", "green"), ("square", "yellow")]}
    items = [  # (image id, question, ocr tokens, 10 answers)
        ("0a1b2c3d4e5f6a7b", "what does the sign say?", ["STOP", "ahead"], ten(("stop", 9), ("stop sign", 1))),
        ("0a1b2c3d4e5f6a7b", "what color is the sign?", ["STOP"], ten(("red", 10))),
        ("1b2c3d4e5f6a7b8c", "what brand is the can?", [], ten(("coca-cola", 4), ("coca cola", 4),
                                                                 ("coke", 2))),
        ("2c3d4e5f6a7b8c9d", "how many shapes are there?", ["2"], ten(("2", 7), ("two", 3))),
    ]
    for image_id, shapes in images.items():
        save(draw((96, 64), shapes), root / "train_images" / f"{image_id}.jpg")
    questions, data = [], []
    for i, (image_id, q, ocr, answers) in enumerate(items):
        questions.append({"question_id": image_id, "image": f"{image_id}.jpg",
                          "text": f"{q}\nReference OCR token: {', '.join(ocr)}{SHORT}", "category": "default"})
        data.append({"question": q, "image_id": image_id, "image_classes": ["Sign"], "flickr_original_url": "",
                     "flickr_300k_url": "", "image_width": 96, "image_height": 64, "answers": answers,
                     "question_tokens": q.rstrip("?").split(), "question_id": 34602 + i, "set_name": "val"})
    write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", questions)
    write_json(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa",
                                                 "dataset_version": "0.5.1", "data": data})


def make_pope(root: Path) -> None:
    images = {42: [("square", "red")], 73: [("circle", "blue"), ("square", "green")]}
    for no, shapes in images.items():
        save(draw((80, 56), shapes), root / "val2014" / f"COCO_val2014_{no:012d}.jpg")
    splits = {  # split -> first id, [(image, object, label)]
        "adversarial": (1, [(42, "square", "yes"), (42, "circle", "no")]),
        "popular": (20000001, [(73, "circle", "yes"), (73, "person", "no")]),
        "random": (40000001, [(73, "square", "yes"), (42, "dog", "no")]),
    }
    questions = []
    for split, (first, items) in splits.items():
        labels = []
        for k, (no, obj, label) in enumerate(items):
            image = f"COCO_val2014_{no:012d}.jpg"
            word = "imange" if (split, k) == ("random", 1) else "image"  # the upstream typo
            q = f"Is there a {obj} in the {word}?"
            questions.append({"question_id": first + k, "image": image, "text": q + SHORT, "category": split})
            labels.append({"question_id": k + 1, "image": image, "text": q, "label": label})
        write_jsonl(root / "coco" / f"coco_pope_{split}.json", labels)
    write_jsonl(root / "llava_pope_test.jsonl", questions)


def make_mme(root: Path) -> None:
    bench = root / "MME_Benchmark_release_version"
    # (subtask, image file, shapes, [(question, Yes/No)], yes-no separator)
    items = [
        ("existence", "000000000001.jpg", [("square", "red")],
         [("Is there a red square in this image?", "Yes"), ("Is there a blue circle in this image?", "No")], " "),
        ("existence", "000000000002.jpg", [("circle", "blue")],
         [("Is there a blue circle in this image?", "Yes"), ("Is there a red square in this image?", "No")], " "),
        ("artwork", "10001.jpg", [("triangle", "yellow"), ("square", "black")],
         [("Is this artwork created by Mini Painter?", "Yes"), ("Is this artwork created by Someone Else?", "No")],
         "  "),
        ("code_reasoning", "0001.png", [("square", "black"), ("square", "white")],
         [("Is the output of the code 2?", "Yes"), ("Is the output of the code 3?", "No")], " "),
    ]
    questions = []
    for subtask, image, shapes, qas, sep in items:
        structured = subtask in ("artwork", "celebrity", "landmark", "posters", "scene")
        img_rel = f"{subtask}/images/{image}" if structured else f"{subtask}/{image}"
        qa_dir = bench / subtask / "questions_answers_YN" if structured else bench / subtask
        save(draw((70, 90), shapes), bench / img_rel)
        qa_dir.mkdir(parents=True, exist_ok=True)
        (qa_dir / (image.split(".")[0] + ".txt")).write_text(
            "".join(f"{q}{sep}{YES_NO.strip()}\t{a}\n" for q, a in qas), encoding="utf-8")
        for q, _a in qas:
            mme_q = f"{q}{sep}{YES_NO.strip()}"
            text = mme_q.replace(YES_NO, SHORT)  # how llava_mme.jsonl was derived from MME
            questions.append({"question_id": img_rel, "image": img_rel, "text": text, "category": subtask})
    write_jsonl(root / "llava_mme.jsonl", questions)


MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                  "l2-category", "comment", "split"]


def _mmbench_rows(cn: bool) -> list[dict]:
    if cn:
        base = [
            (0, "图中的正方形是什么颜色？", "", ["红色", "蓝色", "绿色", "黄色"], "A", [("square", "red")]),
            (1, "图中有几个圆？", "请数一数。", ["一个", "两个", "三个"], "B", [("circle", "blue"), ("circle", "blue")]),
            (2, "这是什么形状？", "", ["三角形", "正方形"], "A", [("triangle", "green")]),
        ]
    else:
        base = [
            (0, "What color is the square?", "", ["red", "blue", "green", "yellow"], "A", [("square", "red")]),
            (1, "How many circles are there?", "Count carefully.", ["one", "two", "three"], "B",
             [("circle", "blue"), ("circle", "blue")]),
            (2, "Which shape is shown?", "", ["triangle", "square"], "A", [("triangle", "green")]),
        ]
    rows = []
    for idx, q, hint, options, answer, shapes in base:
        row = {"index": idx, "question": q, "hint": hint, "answer": answer, "category": "attribute_recognition",
               "image": b64png(draw((64, 48), shapes)), "source": "mini", "l2-category": "attribute_reasoning",
               "comment": "", "split": "dev"}
        row.update({letter: (options[i] if i < len(options) else "") for i, letter in enumerate("ABCD")})
        rows.append(row)
    # one circular copy (index + 1e6, options rotated by one, answer letter moved with its option)
    src = rows[0]
    opts = [src[c] for c in "ABCD"]
    rotated = opts[1:] + opts[:1]
    copy = dict(src, index=1_000_000 + src["index"], **dict(zip("ABCD", rotated)))
    copy["answer"] = "ABCD"[rotated.index(opts["ABCD".index(src["answer"])])]
    rows.append(copy)
    return rows


def make_mmbench(root: Path) -> None:
    write_tsv(root / "mmbench_dev_20230712.tsv", MMBENCH_HEADER, _mmbench_rows(cn=False))


def make_mmbench_cn(root: Path) -> None:
    write_tsv(root / "mmbench_dev_cn_20231003.tsv", MMBENCH_HEADER, _mmbench_rows(cn=True))


def make_seed(root: Path) -> None:
    types = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
             "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
             "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11,
             "Procedure Understanding": 12}
    items = [  # (qid, data type, type id, shapes, question, choices, answer)
        (101669, "image", 5, [("circle", "red"), ("circle", "red")], "How many circles are there?",
         ["One", "Two", "Three", "Four"], "B"),
        (101670, "image", 3, [("square", "blue")], "What color is the square?", ["Blue", "Red", "Green", "Black"],
         "A"),
        (101671, "image", 1, [("triangle", "green")], "What is the main shape in the scene?",
         ["Circle", "Square", "Triangle", "Line"], "C"),
        (101672, "image", 3, [("square", "yellow")], "What color is the background?",
         ["Black", "White", "Red", "Blue"], "B"),
        (201001, "video", 10, [("circle", "blue")], "What action is being performed?",
         ["Rolling", "Jumping", "Sitting", "Flying"], "A"),
    ]
    questions, official = [], []
    for qid, data_type, type_id, shapes, q, choices, ans in items:
        if data_type == "image":
            data_id = f"{qid}_{qid * 7 % 1000}.jpg"
            rel = f"SEED-Bench-image/{data_id}"
        else:
            data_id = f"v{qid}.mp4"
            rel = f"SEED-Bench-video-image/{type_id}_{qid}.png"  # the extracted middle frame
        save(draw((88, 66), shapes), root / rel)
        text = q + "".join(f"\n{chr(65 + i)}. {c}" for i, c in enumerate(choices)) + LETTER
        name = next(k for k, v in types.items() if v == type_id)
        questions.append({"image": rel, "text": text, "category": name, "question_id": qid})
        official.append({"answer": ans, "choice_a": choices[0], "choice_b": choices[1], "choice_c": choices[2],
                         "choice_d": choices[3], "data_id": data_id, "data_type": data_type, "question": q,
                         "question_id": str(qid), "question_type_id": type_id})
    write_jsonl(root / "llava-seed-bench.jsonl", questions)
    write_json(root / "SEED-Bench.json", {"questions": official, "question_type": types})


def make_mmvet(root: Path) -> None:
    items = [(0, [("square", "red")], "What is the color of the square?", "rec"),
             (1, [("circle", "blue"), ("circle", "blue")], "How many circles are in the image? Explain.", "rec,know"),
             (2, [("triangle", "green")], "Write a short poem about this shape.", "gen")]
    questions = []
    for qid, shapes, q, cat in items:
        save(draw((72, 72), shapes), root / "images" / f"v1_{qid}.png")
        questions.append({"image": f"v1_{qid}.png", "text": q, "category": cat, "question_id": qid})
    write_jsonl(root / "llava-mm-vet.jsonl", questions)


def make_llavabench(root: Path) -> None:
    images = {"001.jpg": ([("square", "red"), ("circle", "blue")], "A red square next to a blue circle."),
              "002.jpg": ([("triangle", "green")], "A single green triangle on white.")}
    for name, (shapes, _caption) in images.items():
        save(draw((100, 70), shapes), root / "images" / name)
    items = [(0, "001.jpg", "What shapes are in the image?", "conv", "There is a red square and a blue circle."),
             (1, "001.jpg", "Describe the image in detail.", "detail",
              "The image shows a red square on the left and a blue circle on the right, on a white background."),
             (2, "002.jpg", "Why might someone draw a single triangle?", "complex",
              "Perhaps to illustrate a basic geometric shape, for example in a lesson.")]
    write_jsonl(root / "questions.jsonl", [{"question_id": qid, "image": img, "text": q, "category": cat}
                                           for qid, img, q, cat, _ in items])
    write_jsonl(root / "context.jsonl", [{"id": name.split(".")[0], "image": name, "caption": cap}
                                         for name, (_s, cap) in images.items()])
    write_jsonl(root / "answers_gpt4.jsonl", [{"question_id": qid, "prompt": q, "text": ref,
                                               "answer_id": f"gpt4-{qid}", "model_id": "gpt-4-0314", "metadata": {}}
                                              for qid, _img, q, _cat, ref in items])


# registry name -> (folder under the data root, builder)
BUILDERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "vqav2": ("vqav2", make_vqav2),
    "gqa": ("gqa", make_gqa),
    "vizwiz": ("vizwiz", make_vizwiz),
    "sqa": ("scienceqa", make_scienceqa),
    "textvqa": ("textvqa", make_textvqa),
    "pope": ("pope", make_pope),
    "mme": ("MME", make_mme),
    "mmbench": ("mmbench", make_mmbench),
    "mmbench_cn": ("mmbench_cn", make_mmbench_cn),
    "seed": ("seed_bench", make_seed),
    "mmvet": ("mm-vet", make_mmvet),
    "llavabench": ("llava-bench-in-the-wild", make_llavabench),
}


def generate(out: str | Path, benchmarks: Sequence[str] | None = None) -> dict[str, Path]:
    """Write the mini benchmarks under ``out``; returns ``{name: folder}``."""
    out = Path(out)
    names = list(BUILDERS) if not benchmarks else list(benchmarks)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BUILDERS)}")
    folders = {}
    for name in names:
        folder, build = BUILDERS[name]
        build(out / folder)
        folders[name] = out / folder
    return folders


# --- reference answers -----------------------------------------------------------------------------

_QUESTION_FILES = {"vqav2": "llava_vqav2_mscoco_test-dev2015.jsonl", "gqa": "llava_gqa_testdev_balanced.jsonl",
                   "vizwiz": "llava_test.jsonl", "textvqa": "llava_textvqa_val_v051_ocr.jsonl",
                   "pope": "llava_pope_test.jsonl", "mme": "llava_mme.jsonl", "seed": "llava-seed-bench.jsonl",
                   "mmvet": "llava-mm-vet.jsonl", "llavabench": "questions.jsonl"}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_tsv(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def reference_answers(root: str | Path, name: str) -> list[dict]:
    """Answers (``question_id``, ``prompt``, ``text``; MMBench also ``round_id``/``options``/``option_char``)
    whose text is the ground truth of a generated mini benchmark, read back from its files; they
    score 100 % (MME: 200 per subtask). MM-Vet and LLaVA-Bench, which have no key, get a fixed text."""
    d = Path(root) / BUILDERS[name][0]
    if name == "sqa":
        problems = _read_json(d / "problems.json")
        out = []
        for q in _read_json(d / "llava_test_CQM-A.json"):
            prompt = q["conversations"][0]["value"].replace("<image>", "").strip() + LETTER
            if "image" in q:
                prompt = "<image>\n" + prompt
            out.append({"question_id": q["id"], "prompt": prompt, "text": "ABCDE"[problems[q["id"]]["answer"]]})
        return out
    if name in ("mmbench", "mmbench_cn"):
        tsv = "mmbench_dev_20230712.tsv" if name == "mmbench" else "mmbench_dev_cn_20231003.tsv"
        out = []
        for r in _read_tsv(d / tsv):
            options = [r[c] for c in "ABCD" if r.get(c)]
            out.append({"question_id": int(r["index"]), "round_id": 0, "prompt": r["question"], "text": r["answer"],
                        "options": options, "option_char": list("ABCD"[:len(options)])})
        return out
    qs = _read_jsonl(d / _QUESTION_FILES[name])

    def most_common(answers: Sequence[str]) -> str:
        return max(answers, key=answers.count)

    if name == "textvqa":
        gt = {(e["image_id"], e["question"].lower()): most_common(e["answers"])
              for e in _read_json(d / "TextVQA_0.5.1_val.json")["data"]}
        texts = [gt[(q["question_id"], q["text"].split("\n")[0].lower())] for q in qs]
    elif name == "pope":
        labels = {s: [r["label"] for r in _read_jsonl(d / "coco" / f"coco_pope_{s}.json")]
                  for s in ("adversarial", "popular", "random")}
        seen: dict[str, int] = {}
        texts = []
        for q in qs:
            k = seen.get(q["category"], 0)
            texts.append(labels[q["category"]][k].capitalize())
            seen[q["category"]] = k + 1
    elif name == "mme":
        texts = []
        for q in qs:
            cat, file = q["question_id"].split("/")[0], q["question_id"].split("/")[-1].split(".")[0] + ".txt"
            base = d / "MME_Benchmark_release_version" / cat
            txt = (base / "questions_answers_YN" if (base / "images").exists() else base) / file
            pairs = dict(line.split("\t") for line in txt.read_text(encoding="utf-8").splitlines())
            stem = q["text"].split("\n")[0].strip()
            texts.append(next(a for k, a in pairs.items() if k.startswith(stem)))
    elif name == "gqa":
        official = _read_json(d / "data" / "testdev_balanced_questions.json")
        texts = [official[q["question_id"]]["answer"].capitalize() + "." for q in qs]
    elif name == "seed":
        official = {x["question_id"]: x["answer"] for x in _read_json(d / "SEED-Bench.json")["questions"]}
        texts = [official[str(q["question_id"])] for q in qs]
    elif name == "vqav2":
        ann = {a["question_id"]: [x["answer"] for x in a["answers"]]
               for a in _read_json(d / "annotations_mini.json")["annotations"]}
        texts = [most_common(ann[q["question_id"]]) for q in qs]
    elif name == "vizwiz":
        ann = {a["image"]: [x["answer"] for x in a["answers"]] for a in _read_json(d / "annotations_mini.json")}
        texts = [most_common(ann[q["image"]]) for q in qs]
    else:
        texts = ["A red square." for _ in qs]
    return [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(qs, texts)]


def write_reference_answers(root: str | Path, name: str, path: str | Path | None = None) -> Path:
    """Write :func:`reference_answers` in LLaVA's answer schema (default ``<bench>/answers/reference.jsonl``)."""
    path = Path(path) if path else Path(root) / BUILDERS[name][0] / "answers" / "reference.jsonl"
    records = []
    for i, a in enumerate(reference_answers(root, name)):
        records.append({**a, "answer_id": f"reference-{i}", "model_id": "reference",
                        "metadata": {"method": "none", "method_args": {}, "visual_tokens": 576}})
    write_jsonl(path, records)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.data.mini", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write (use it as the eval data root)")
    p.add_argument("--benchmarks", help=f"comma-separated subset of {','.join(BUILDERS)}")
    p.add_argument("--reference-answers", action="store_true",
                   help="also write <bench>/answers/reference.jsonl holding the ground-truth answers")
    args = p.parse_args(argv)
    try:
        folders = generate(args.out, args.benchmarks.split(",") if args.benchmarks else None)
        if args.reference_answers:
            for name in folders:
                write_reference_answers(args.out, name)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = [f for d in folders.values() for f in d.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(folders)} benchmarks, {len(files)} files, {size / 1024:.1f} KiB under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
