"""The answers label of a scripted run: the method name plus every flag given that can change an answer.

Scripts write answers under ``.../answers/<ckpt>/<label>/...``, so runs with different settings never share a
file (and never resume each other's answers)::

    fastv                                   no flags: the label is the method name (as before)
    fastv_fastv-k-3                         --fastv-k 3 (the script's METHOD_ARG, or after --)
    fastv_fastv-k-3_temperature-0.2         flags sorted by name; underscores in names become dashes
    fastervlm_budget-mode-global            the video scripts' EXTRA_ARGS="--budget-mode global"
    fastervlm_keep-cls                      a switch
    none_vision-tower-clip-vit-large-1f3a9c a value with other characters: readable part + a hash of it

A flag given explicitly counts even at its default value. Flags that change no answer (:data:`NOT_SETTINGS`:
workers, device, batching, resume and error handling) are left out; when a flag is given twice the last wins
(as argparse reads it).

    python -m llava.eval.run_label METHOD [-- FLAGS...]      prints the label (used by the video scripts)
"""

from __future__ import annotations

import hashlib
import re
import sys

NOT_SETTINGS = frozenset({
    "--num-workers", "--device", "--batch-size", "--overwrite", "--skip-bad-inputs", "--retry-errors",
    "--save-kept-tokens", "--no-save-kept-tokens",
})
_PLAIN = re.compile(r"[A-Za-z0-9_.,+=-]+")


class LabelError(ValueError):
    """Extra arguments that are not ``--flag [value]`` pairs."""


def parse_flags(args: list[str]) -> dict[str, str | None]:
    """``--name value`` / ``--name=value`` / ``--switch`` tokens -> ``{"--name": "value", "--switch": None}``
    (the last occurrence of a flag wins; several values after one flag are joined by commas)."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise LabelError(f"unexpected argument {token!r} among the extra flags; they look like --name value")
        if "=" in token:
            name, value = token.split("=", 1)
            i += 1
        else:
            values = []
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
            name, value = token, (",".join(values) if values else None)
        flags.pop(name, None)  # re-inserted last: the order shows which occurrence counts
        flags[name] = value
    return flags


def _value_part(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return value
    readable = re.sub(r"[^A-Za-z0-9_.,+=-]+", "-", value).strip("-")[-40:]
    digest = hashlib.sha1(value.encode("utf-8")).hexdigest()[:6]
    return f"{readable}-{digest}" if readable else digest


def flag_part(name: str, value: str | None) -> str:
    """``--fastv-k``, ``3`` -> ``fastv-k-3``; ``--keep-cls``, ``None`` -> ``keep-cls``."""
    part = name.lstrip("-").replace("_", "-")
    return part if value is None else f"{part}-{_value_part(value)}"


def settings_label(method_label: str, flags: list[str]) -> str:
    """``method_label`` followed by ``_<flag>-<value>`` for each flag of ``flags`` that can change an answer,
    sorted by flag name."""
    parts = sorted(flag_part(name, value) for name, value in parse_flags(flags).items() if name not in NOT_SETTINGS)
    return "_".join([method_label, *parts])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: python -m llava.eval.run_label METHOD [-- FLAGS...]", file=sys.stderr)
        return 2
    method, rest = argv[0], argv[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    try:
        print(settings_label(method, rest))
    except LabelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
