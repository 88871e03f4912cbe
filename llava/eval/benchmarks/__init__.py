"""Benchmark scorers and their registry (lmms-eval style).

``TASKS`` maps a benchmark name (vqav2, gqa, vizwiz, sqa, textvqa, pope, mme, mmbench, mmbench_cn,
seed, mmvet, llavabench) to a :class:`BenchmarkTask`: question file, default image folder, inference
entry point and its extra flags, ``max_new_tokens``, data layout under
``playground/data/eval/<data_dir>/``, the headline metric, and one scorer. Each per-benchmark module
holds pure functions over loaded records that reproduce the original evaluation; its docstring lists
the rules kept and the deviations. CLI::

    python -m llava.eval.benchmarks list
    python -m llava.eval.benchmarks score pope --answers-file ANSWERS.jsonl [--data-root DIR]
        [--checkpoint C] [--method M] [--visual-tokens N] [--results-file P] [--annotation-file P]

Answers files (input) follow LLaVA's schema, one JSON object per line: ``question_id``, ``prompt``
(the question-file text; ScienceQA image items prefixed ``"<image>\\n"``), ``text`` (the answer),
``answer_id``, ``model_id``, ``metadata`` (a dict; this project puts ``method``, ``method_args``,
``run`` and ``visual_tokens`` there). MMBench answers also carry ``round_id``, ``options`` and
``option_char``. Answers are paired with the question file by ``question_id`` (and ``round_id``), in
any file order; every question needs exactly one answer (ids that repeat in the question file, as
MME's, as often as there), and all records must share one setting (``model_id``, ``metadata.method``,
``method_args``, ``run``) or, as in the original LLaVA's files, none carry any (see ``common.py``).

Results file (output; one per scored run)
----------------------------------------
Path: ``<data root>/<data_dir>/results/<checkpoint>/<method>/<visual_tokens>.json``: ``full.json`` for
the uncompressed baseline (method ``none``, as its answers file ``none/full.jsonl``), ``na.json`` when
the token count is unknown; ``/`` in names becomes ``_``. One JSON object::

    {
      "benchmark": "pope",                 # registry name
      "checkpoint": "llava-v1.5-7b",       # --checkpoint, else the answers' model_id
      "method": "fastervlm",               # --method (a run label, e.g. vtc-cls_start-layer-22), else
                                           # metadata.method, else "none"
      "compression_method": "fastervlm",   # metadata.method: the registry name (null if not recorded)
      "method_args": {...},                # metadata.method_args (or {})
      "visual_tokens": 144,                # the budget label: --visual-tokens, else
                                           # method_args.visual_token_num, else the most common
                                           # metadata.visual_tokens (576 for the unpruned model)
      "visual_tokens_mean": 143.2,         # mean of metadata.visual_tokens over answers (null if absent)
      "headline_metric": "mean_f1",        # the task's headline metric name
      "headline": 85.87,                   # its value in percent (MME: points); null if not local
      "metrics": {...},                    # every metric the scorer computes (percent unless a count)
      "answers_file": "...", "num_answers": 8910,
      "num_input_errors": 0,               # answers whose metadata records an unreadable input
      "converted_file": "...",             # upload / converted file written alongside, or null
      "warnings": ["..."]                  # e.g. splits or subtasks without answers, input errors
    }

Upload / converted files go to ``<data_dir>/answers_upload/<checkpoint>/<method>/<tokens>.<ext>`` (``full``
for the baseline)
(MME: the official eval tool's per-subtask files under ``<data_dir>/eval_tool/answers/...``).
``llava.eval.summarize`` reads every results file under the data root.
"""

from .common import ScorerInputError
from .registry import DEFAULT_DATA_ROOT, TASKS, BenchmarkTask, ScoreContext, ScoreOutcome, get_task, score

__all__ = ["DEFAULT_DATA_ROOT", "TASKS", "BenchmarkTask", "ScoreContext", "ScoreOutcome", "ScorerInputError",
           "get_task", "score"]
