"""``python -m llava.compression.families [--json]``: the registered model families and the methods that apply.

For each family: its stages and capabilities, the methods that can run on it, and every other method with the
reason it is refused (a stage the family does not integrate, or a requirement such as a [CLS] token it lacks).
Checkpoint-specific limits (a budget larger than the grid, a rule defined for 576 patches) are checked when a
method is applied to a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llava.compression.families import available_families, get_family
from llava.compression.registry import available_methods, get_method


def family_table() -> list[dict[str, Any]]:
    """One dict per family: ``name``, ``stages``, ``provides``, ``methods`` (applicable) and ``refused``
    (``{method: reason}``)."""
    rows = []
    for name in available_families():
        family = get_family(name)
        methods, refused = [], {}
        for method in available_methods():
            if not get_method(method).stages:
                continue  # "none" runs on every model
            reason = family.refusal(get_method(method))
            if reason is None:
                methods.append(method)
            else:
                refused[method] = reason
        rows.append({"name": name, "stages": [s.value for s in family.stages], "provides": sorted(family.provides),
                     "methods": methods, "refused": refused})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava.compression.families", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    rows = family_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']}: stages {', '.join(row['stages'])}; provides {', '.join(row['provides']) or 'nothing'}")
        print(f"  methods: {', '.join(row['methods'])}")
        for method, reason in row["refused"].items():
            print(f"  not {method}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
