"""Benchmark registry: name -> :class:`BenchmarkTask` (data layout, inference entry point, scorer).

See the package docstring (``llava/eval/benchmarks/__init__.py``) for the results-file format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import gqa, mmbench, mme, open_ended, pope, science_qa, seed, textvqa, vizwiz, vqav2
from .common import (
    ScorerInputError,
    load_answers,
    match_to_questions,
    qid_key,
    read_json,
    read_jsonl,
    read_tsv,
    write_json,
    write_jsonl,
)

DEFAULT_DATA_ROOT = Path("playground/data/eval")
BUDGET_ARG = "visual_token_num"  # the method argument that holds a token budget (llava.compression)
BASELINE_METHODS = ("none", "baseline")  # no compression: the answers / results file is named ``full``
FULL = "full"

LOADER = "llava.eval.model_vqa_loader"
SCIENCE = "llava.eval.model_vqa_science"
OPEN = "llava.eval.model_vqa"
MMBENCH = "llava.eval.model_vqa_mmbench"


@dataclass
class ScoreContext:
    """What a scorer gets: the task, its data folder, the answers (file order) and optional overrides."""

    task: BenchmarkTask
    data_dir: Path
    answers: list[dict]  # in question-file order (see common.match_to_questions)
    answers_file: Path
    bad_lines: int = 0
    questions: list[dict] | None = None  # the question file's records, loaded once
    question_file: Path | None = None
    annotation_file: Path | None = None
    converted_file: Path | None = None  # where the upload / converted file goes (None: not written)

    def question_path(self) -> Path:
        return self.question_file or self.data_dir / self.task.question_file


@dataclass
class ScoreOutcome:
    headline: float | None
    metrics: dict[str, Any]
    converted_file: Path | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BenchmarkTask:
    """One benchmark. Paths are relative to ``<data root>/<data_dir>``."""

    name: str
    title: str
    data_dir: str
    question_file: str
    image_folder: str | None
    entry_point: str
    extra_args: tuple[str, ...]
    max_new_tokens: int
    headline_metric: str
    layout: tuple[str, ...]
    scorer: Callable[[ScoreContext], ScoreOutcome]
    converted_ext: str | None = None  # extension of the upload / converted file, None if none
    multi_gpu: bool = False
    server_scored: bool = False  # the official number comes from an evaluation server or a GPT judge

    def inference_args(self, data_root: str | Path = DEFAULT_DATA_ROOT) -> list[str]:
        """``--question-file``/``--image-folder`` plus the task's extra flags, for its entry point."""
        base = Path(data_root) / self.data_dir
        args = ["--question-file", str(base / self.question_file)]
        if self.image_folder is not None:
            args += ["--image-folder", str(base / self.image_folder)]
        return args + list(self.extra_args)

    def load_questions(self, data_root: str | Path = DEFAULT_DATA_ROOT) -> list[dict]:
        """The question file's records (JSON lines, ScienceQA's JSON array, or MMBench's tsv rows)."""
        return load_question_file(Path(data_root) / self.data_dir / self.question_file)


def load_question_file(path: Path) -> list[dict]:
    if path.suffix == ".tsv":
        return read_tsv(path, "question file")[1]
    if path.suffix == ".json":
        data = read_json(path, "question file")
        if not isinstance(data, list):
            raise ScorerInputError(f"question file {path} is not a JSON list")
        return data
    return read_jsonl(path, "question file")[0]


def _questions(ctx: ScoreContext, keys: Sequence[str] = ("question_id",)) -> list[dict]:
    path = ctx.question_path()
    records = ctx.questions if ctx.questions is not None else load_question_file(path)
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, Mapping) or any(k not in rec for k in keys):
            raise ScorerInputError(f"question file {path} record {i} lacks one of {', '.join(keys)}")
    return records


# --- scorers -------------------------------------------------------------------------------------


def _score_sqa(ctx: ScoreContext) -> ScoreOutcome:
    problems, split_ids = science_qa.load_science_qa(ctx.data_dir)
    res = science_qa.score_science_qa(problems, split_ids, ctx.answers)
    warn = [f"{res.num_missing} problems have no answer (scored FAILED)"] if res.num_missing else []
    return ScoreOutcome(res.img_accuracy, res.metrics(), warnings=warn)


def _score_textvqa(ctx: ScoreContext) -> ScoreOutcome:
    path = ctx.annotation_file or ctx.data_dir / "TextVQA_0.5.1_val.json"
    m = textvqa.score_textvqa(ctx.answers, textvqa.load_annotation(path))
    return ScoreOutcome(m["accuracy"], m)


def _score_pope(ctx: ScoreContext) -> ScoreOutcome:
    labels = pope.load_labels(ctx.annotation_file or ctx.data_dir / "coco")
    m = pope.score_pope(ctx.answers, _questions(ctx), labels)
    warnings = list(m.pop("warnings"))
    if m["missing_splits"]:
        warnings.append(f"no answers for splits {m['missing_splits']}; mean F1 is over the others")
    return ScoreOutcome(m["mean_f1"], m, warnings=warnings)


def _score_mme(ctx: ScoreContext) -> ScoreOutcome:
    gt = mme.load_ground_truth(ctx.annotation_file or ctx.data_dir / "MME_Benchmark_release_version")
    rows = mme.convert_answers(ctx.answers, gt)
    m = mme.score_mme(rows)
    if ctx.converted_file is not None:
        mme.write_eval_tool_files(rows, ctx.converted_file)
    warnings = [f"no answers for subtasks {m['missing_subtasks']}"] if m["missing_subtasks"] else []
    return ScoreOutcome(m["perception"], m, ctx.converted_file, warnings)


def _score_gqa(ctx: ScoreContext) -> ScoreOutcome:
    questions = read_json(ctx.annotation_file or ctx.data_dir / "data" / "testdev_balanced_questions.json",
                          "GQA questions file")
    preds = gqa.convert_for_eval(ctx.answers)
    m = gqa.score_gqa(questions, preds)
    if ctx.converted_file is not None:
        write_json(ctx.converted_file, preds, indent=None)
    warn = [f"{m['num_missing']} balanced questions have no answer (scored wrong)"] if m["num_missing"] else []
    return ScoreOutcome(m["accuracy"], m, ctx.converted_file, warn)


def _score_mmbench(ctx: ScoreContext) -> ScoreOutcome:
    header, rows = read_tsv(ctx.question_path(), "MMBench tsv")
    if "index" not in header:
        raise ScorerInputError(f"MMBench tsv {ctx.question_path()} has no 'index' column")
    if ctx.converted_file is not None:
        mmbench.write_upload(ctx.converted_file, header, rows, ctx.answers)
    m = mmbench.score_mmbench(ctx.answers, rows)
    if m is None:
        return ScoreOutcome(None, {"num_answers": len(ctx.answers)}, ctx.converted_file,
                            ["the tsv has no answers; accuracy comes from the OpenCompass server"])
    return ScoreOutcome(m["circular_accuracy"], m, ctx.converted_file)


def _score_seed(ctx: ScoreContext) -> ScoreOutcome:
    annotation = read_json(ctx.annotation_file or ctx.data_dir / "SEED-Bench.json", "SEED-Bench annotation")
    m = seed.score_seed(ctx.answers, annotation)
    if ctx.converted_file is not None:
        write_jsonl(ctx.converted_file, seed.upload_lines(ctx.answers, annotation))
    warn = [f"{m['num_missing']} questions have no answer (scored wrong)"] if m["num_missing"] else []
    return ScoreOutcome(m["accuracy_image"], m, ctx.converted_file, warn)


def _score_vqav2(ctx: ScoreContext) -> ScoreOutcome:
    test_questions = read_jsonl(ctx.data_dir / "llava_vqav2_mscoco_test2015.jsonl", "VQAv2 test2015 list")[0]
    upload = vqav2.upload_answers(ctx.answers, test_questions)
    if ctx.converted_file is not None:
        write_json(ctx.converted_file, upload, indent=None)
    metrics: dict[str, Any] = {"num_upload": len(upload), "error_lines": ctx.bad_lines,
                               "num_empty": sum(1 for u in upload if u["answer"] == "")}
    headline = None
    if ctx.annotation_file is not None:
        local = vqav2.local_accuracy(ctx.answers, vqav2.annotation_answers(
            read_json(ctx.annotation_file, "VQA annotation file")))
        metrics.update(local)
        headline = local["accuracy"]
    return ScoreOutcome(headline, metrics, ctx.converted_file)


def _score_vizwiz(ctx: ScoreContext) -> ScoreOutcome:
    questions = _questions(ctx, ("question_id", "image"))
    upload = vizwiz.upload_answers(ctx.answers, questions)
    if ctx.converted_file is not None:
        write_json(ctx.converted_file, upload, indent=None)
    metrics: dict[str, Any] = {"num_upload": len(upload), "error_lines": ctx.bad_lines}
    headline = None
    if ctx.annotation_file is not None:
        gt = vizwiz.annotation_answers(read_json(ctx.annotation_file, "VizWiz annotation file"))
        local = vizwiz.local_accuracy(ctx.answers, questions, gt)
        metrics.update(local)
        headline = local["accuracy"]
    return ScoreOutcome(headline, metrics, ctx.converted_file)


def _score_mmvet(ctx: ScoreContext) -> ScoreOutcome:
    if ctx.converted_file is not None:
        write_json(ctx.converted_file, open_ended.mmvet_results(ctx.answers))
    return ScoreOutcome(None, {"num_answers": len(ctx.answers)}, ctx.converted_file,
                        ["MM-Vet is scored by the GPT-4 grader; no local score"])


def _score_llavabench(ctx: ScoreContext) -> ScoreOutcome:
    questions = _questions(ctx)
    contexts = read_jsonl(ctx.data_dir / "context.jsonl", "LLaVA-Bench context file")[0]
    refs = read_jsonl(ctx.data_dir / "answers_gpt4.jsonl", "LLaVA-Bench GPT-4 answers")[0]
    inputs = open_ended.llavabench_review_inputs(ctx.answers, questions, contexts, refs)
    if ctx.converted_file is not None:
        write_jsonl(ctx.converted_file, inputs)
    unanswered = sum(1 for x in inputs if x["answer"] is None)
    return ScoreOutcome(None, {"num_answers": len(ctx.answers), "num_unanswered": unanswered},
                        ctx.converted_file, ["LLaVA-Bench is scored by a GPT-4 judge; no local score"])


_SHORT = 128
_LONG = 1024

TASKS: dict[str, BenchmarkTask] = {t.name: t for t in (
    BenchmarkTask("vqav2", "VQAv2 test-dev", "vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", "test2015",
                  LOADER, (), _SHORT, "accuracy",
                  ("llava_vqav2_mscoco_test-dev2015.jsonl", "llava_vqav2_mscoco_test2015.jsonl", "test2015/"),
                  _score_vqav2, "json", multi_gpu=True, server_scored=True),
    BenchmarkTask("gqa", "GQA testdev-balanced", "gqa", "llava_gqa_testdev_balanced.jsonl", "data/images",
                  LOADER, (), _SHORT, "accuracy",
                  ("llava_gqa_testdev_balanced.jsonl", "data/images/", "data/testdev_balanced_questions.json"),
                  _score_gqa, "json", multi_gpu=True),
    BenchmarkTask("vizwiz", "VizWiz test", "vizwiz", "llava_test.jsonl", "test", LOADER, (), _SHORT, "accuracy",
                  ("llava_test.jsonl", "test/"), _score_vizwiz, "json", server_scored=True),
    BenchmarkTask("sqa", "ScienceQA test (IMG)", "scienceqa", "llava_test_CQM-A.json", "images/test", SCIENCE,
                  ("--single-pred-prompt",), _LONG, "img_accuracy",
                  ("llava_test_CQM-A.json", "images/test/<pid>/image.png", "problems.json", "pid_splits.json"),
                  _score_sqa),
    BenchmarkTask("textvqa", "TextVQA val", "textvqa", "llava_textvqa_val_v051_ocr.jsonl", "train_images",
                  LOADER, (), _SHORT, "accuracy",
                  ("llava_textvqa_val_v051_ocr.jsonl", "TextVQA_0.5.1_val.json", "train_images/"),
                  _score_textvqa),
    BenchmarkTask("pope", "POPE (COCO)", "pope", "llava_pope_test.jsonl", "val2014", LOADER, (), _SHORT,
                  "mean_f1", ("llava_pope_test.jsonl", "coco/coco_pope_{adversarial,popular,random}.json",
                              "val2014/"), _score_pope),
    BenchmarkTask("mme", "MME", "MME", "llava_mme.jsonl", "MME_Benchmark_release_version", LOADER, (), _SHORT,
                  "perception", ("llava_mme.jsonl", "MME_Benchmark_release_version/<subtask>/..."),
                  _score_mme, "dir"),
    BenchmarkTask("mmbench", "MMBench dev", "mmbench", "mmbench_dev_20230712.tsv", None, MMBENCH,
                  ("--single-pred-prompt",), _LONG, "circular_accuracy", ("mmbench_dev_20230712.tsv",),
                  _score_mmbench, "xlsx", server_scored=True),
    BenchmarkTask("mmbench_cn", "MMBench-CN dev", "mmbench_cn", "mmbench_dev_cn_20231003.tsv", None, MMBENCH,
                  ("--lang", "cn", "--single-pred-prompt"), _LONG, "circular_accuracy",
                  ("mmbench_dev_cn_20231003.tsv",), _score_mmbench, "xlsx", server_scored=True),
    BenchmarkTask("seed", "SEED-Bench (image)", "seed_bench", "llava-seed-bench.jsonl", ".", LOADER, (), _SHORT,
                  "accuracy_image",
                  ("llava-seed-bench.jsonl", "SEED-Bench.json", "SEED-Bench-image/", "SEED-Bench-video-image/"),
                  _score_seed, "jsonl", multi_gpu=True),
    BenchmarkTask("mmvet", "MM-Vet", "mm-vet", "llava-mm-vet.jsonl", "images", OPEN, (), _LONG, "gpt4_score",
                  ("llava-mm-vet.jsonl", "images/"), _score_mmvet, "json", server_scored=True),
    BenchmarkTask("llavabench", "LLaVA-Bench (in the wild)", "llava-bench-in-the-wild", "questions.jsonl",
                  "images", OPEN, (), _LONG, "relative_score",
                  ("questions.jsonl", "context.jsonl", "answers_gpt4.jsonl", "images/"), _score_llavabench,
                  "jsonl", server_scored=True),
)}


def get_task(name: str) -> BenchmarkTask:
    try:
        return TASKS[name]
    except KeyError:
        raise ScorerInputError(f"unknown benchmark {name!r}; known: {', '.join(TASKS)}") from None


# --- results files -------------------------------------------------------------------------------


def _in_question_order(task: BenchmarkTask, answers: list[dict], questions: list[dict], answers_where: str,
                       questions_where: str) -> list[dict]:
    """The answers paired with the question file by id (MMBench: by index and round), in its order."""
    if task.name.startswith("mmbench"):
        all_rounds = any(mmbench.answer_round(a)[1] != 0 for a in answers)  # --all-rounds: one per option
        keys = []
        for i, row in enumerate(questions, 1):
            if "index" not in row:
                raise ScorerInputError(f"{questions_where} row {i} has no 'index'")
            rounds = len(mmbench.row_options(row)) if all_rounds else 1
            keys += [(qid_key(row["index"]), r) for r in range(rounds)]
        return match_to_questions(answers, keys, mmbench.answer_round, answers_where, questions_where,
                                  shown=lambda k: f"{k[0]} round {k[1]}" if all_rounds else k[0])
    id_field = "id" if task.name == "sqa" else "question_id"
    for i, q in enumerate(questions, 1):
        if not isinstance(q, Mapping) or id_field not in q:
            raise ScorerInputError(f"{questions_where} record {i} has no '{id_field}'")
    return match_to_questions(answers, [qid_key(q[id_field]) for q in questions],
                              lambda a: qid_key(a["question_id"]), answers_where, questions_where)


def _path_part(value: Any) -> str:
    text = str(value).strip() or "unknown"
    return text.replace("/", "_").replace("\\", "_").replace(" ", "_")


def _answers_provenance(answers: Sequence[Mapping]) -> dict[str, Any]:
    """checkpoint / method / method_args / visual tokens as recorded in the answers' metadata."""
    model_id = method = method_args = None
    tokens: list[float] = []
    errors = 0
    for a in answers:
        meta = a.get("metadata") if isinstance(a.get("metadata"), Mapping) else {}
        errors += bool(meta.get("error"))
        if model_id is None and a.get("model_id"):
            model_id = a["model_id"]
        if method is None and meta.get("method"):
            method = meta["method"]
        if method_args is None and isinstance(meta.get("method_args"), Mapping):
            method_args = dict(meta["method_args"])
        vt = meta.get("visual_tokens")
        if isinstance(vt, int | float) and not isinstance(vt, bool) and vt > 0:
            tokens.append(float(vt))
    mode = None
    if tokens:
        counts: dict[float, int] = {}
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
        mode = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return {"model_id": model_id, "method": method, "method_args": method_args,
            "visual_tokens_mode": int(mode) if mode is not None and mode == int(mode) else mode,
            "visual_tokens_mean": sum(tokens) / len(tokens) if tokens else None, "input_errors": errors}


def _budget(method_args: Mapping[str, Any]) -> int | None:
    value = method_args.get(BUDGET_ARG)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def budget_label(method: str, visual_tokens: Any) -> str:
    """The file name stem of a run's results / upload file: ``full`` for the uncompressed baseline (as its
    answers file), else the token budget (``na`` when unknown)."""
    if str(method).lower() in BASELINE_METHODS:
        return FULL
    return "na" if visual_tokens is None else _path_part(visual_tokens)


def results_path(data_root: str | Path, task: BenchmarkTask, checkpoint: str, method: str,
                 visual_tokens: Any) -> Path:
    tokens = budget_label(method, visual_tokens)
    return (Path(data_root) / task.data_dir / "results" / _path_part(checkpoint) / _path_part(method)
            / f"{tokens}.json")


def converted_path(data_root: str | Path, task: BenchmarkTask, checkpoint: str, method: str,
                   visual_tokens: Any) -> Path | None:
    if task.converted_ext is None:
        return None
    tokens = budget_label(method, visual_tokens)
    folder = "eval_tool/answers" if task.name == "mme" else "answers_upload"
    base = Path(data_root) / task.data_dir / folder / _path_part(checkpoint) / _path_part(method)
    return base / tokens if task.converted_ext == "dir" else base / f"{tokens}.{task.converted_ext}"


def score(benchmark: str, answers_file: str | Path, *, data_root: str | Path = DEFAULT_DATA_ROOT,
          checkpoint: str | None = None, method: str | None = None, method_args: Mapping | None = None,
          visual_tokens: int | None = None, results_file: str | Path | None = None,
          question_file: str | Path | None = None, annotation_file: str | Path | None = None,
          converted_file: str | Path | None = None, write_converted: bool = True) -> dict[str, Any]:
    """Score one answers file and write its results file; returns the results record."""
    task = get_task(benchmark)
    data_root = Path(data_root)
    data_dir = data_root / task.data_dir
    if not data_dir.is_dir():
        raise ScorerInputError(f"benchmark folder not found: {data_dir}")
    tolerant = benchmark in ("vqav2", "vizwiz")
    answers, bad = load_answers(answers_file, tolerant=tolerant)
    question_path = Path(question_file) if question_file else data_dir / task.question_file
    questions = load_question_file(question_path)
    bad_note = f" ({bad} unreadable lines skipped)" if bad else ""
    answers = _in_question_order(task, answers, questions, f"answers file {answers_file}{bad_note}",
                                 f"question file {question_path}")
    prov = _answers_provenance(answers)
    checkpoint = checkpoint or prov["model_id"] or "unknown"
    method = method or prov["method"] or "none"
    method_args = dict(method_args) if method_args is not None else (prov["method_args"] or {})
    if visual_tokens is None:
        visual_tokens = _budget(method_args)
    if visual_tokens is None:
        visual_tokens = prov["visual_tokens_mode"]
    conv = None
    if write_converted:
        conv = Path(converted_file) if converted_file else converted_path(data_root, task, checkpoint, method,
                                                                          visual_tokens)
    ctx = ScoreContext(task, data_dir, answers, Path(answers_file), bad, questions,
                       Path(question_file) if question_file else None,
                       Path(annotation_file) if annotation_file else None, conv)
    outcome = task.scorer(ctx)
    if prov["input_errors"]:
        outcome.warnings.append(f"{prov['input_errors']} answers record an input error (metadata.error); "
                                "they are scored as given (empty text)")
    record = {
        "benchmark": task.name,
        "checkpoint": checkpoint,
        "method": method,
        "compression_method": prov["method"],
        "method_args": method_args,
        "visual_tokens": visual_tokens,
        "visual_tokens_mean": prov["visual_tokens_mean"],
        "headline_metric": task.headline_metric,
        "headline": outcome.headline,
        "metrics": outcome.metrics,
        "answers_file": str(answers_file),
        "num_answers": len(answers),
        "num_input_errors": prov["input_errors"],
        "converted_file": str(outcome.converted_file) if outcome.converted_file else None,
        "warnings": outcome.warnings,
    }
    out = Path(results_file) if results_file else results_path(data_root, task, checkpoint, method, visual_tokens)
    write_json(out, record)
    record["results_file"] = str(out)
    return record
