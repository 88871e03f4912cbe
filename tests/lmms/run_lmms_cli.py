"""Run lmms-eval's own CLI (what ``python -m lmms_eval ARGS`` runs) once per argument list, in this one process, then
fail loudly if anything imported torchvision.

    python tests/lmms/run_lmms_cli.py '[{"argv": ["--model", "vtc_llava", ...], "exit": 0}, ...]'

One process for several runs pays lmms-eval's import time (torch, transformers, datasets, evaluate) once. The task
index is the one thing changed: every run's ``TaskManager`` parses all ~2000 built-in task YAML files (about 8 s of
CPU) before it looks at ``--include_path``; here, when ``--include_path`` is given, only those folders are indexed
(the test's tasks live there and include nothing built in). A run that fails exits with its status (the plugin's one-line errors exit with 2); lmms-eval's
CLI itself prints a traceback and exits 0 on other errors, which the test notices by the missing results files. A run
given ``"exit": N`` must end with status N (the plugin's one-line errors: 2), and the next run goes on.
"""

from __future__ import annotations

import json
import runpy
import sys
import time

STARTED = time.perf_counter()


def index_only_included_tasks() -> None:
    from lmms_eval.tasks import TaskManager

    build = TaskManager.initialize_tasks

    def initialize_tasks(self, include_path=None, include_defaults=True):
        return build(self, include_path=include_path, include_defaults=include_defaults and not include_path)

    TaskManager.initialize_tasks = initialize_tasks


def main() -> None:
    runs = json.loads(sys.argv[1])
    index_only_included_tasks()
    print(f"lmms-eval imported: {time.perf_counter() - STARTED:.1f} s wall, {time.process_time():.1f} s CPU", file=sys.stderr)
    for run in runs:
        sys.argv = ["lmms_eval", *run["argv"]]
        status = 0
        try:
            runpy.run_module("lmms_eval", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            status = stop.code or 0
        if status != run.get("exit", 0):
            print(f"FAIL: exit status {status}, expected {run.get('exit', 0)}: {run['argv']}", file=sys.stderr)
            sys.exit(4)
        print(f"run done: {time.perf_counter() - STARTED:.1f} s wall, {time.process_time():.1f} s CPU", file=sys.stderr)
    if "torchvision" in sys.modules:
        print("FAIL: torchvision was imported (lmms-eval or the plugin pulled it in): "
              f"{sys.modules['torchvision'].__file__}", file=sys.stderr)
        sys.exit(3)
    print("torchvision not imported")


if __name__ == "__main__":
    main()
