"""``--model_args`` of the lmms-eval plugin, parsed by the same argparse flags as the ``--method`` CLI.

lmms-eval hands a model class its ``--model_args`` as typed keyword arguments (``visual_token_num=64`` arrives as
``64``, ``keep_cls=true`` as ``True``), plus its own ``batch_size`` / ``max_batch_size`` / ``device``. Each key is
the name of a flag of our entry points without the leading dashes and with ``_`` for ``-``: ``method=fastv``,
``visual_token_num=64``, ``fastv_k=3``, ``pdrop_layers=[8,16,24]`` (a list in brackets or quotes, since lmms-eval
splits ``--model_args`` on bare commas). The keys become an argument list for one ``argparse`` parser holding the
model class's loading flags and every method flag (:func:`llava.compression.registry.add_method_arguments`), so
types, choices and the method's validation (:func:`llava.compression.registry.config_from_args`) are exactly the
CLI's. Any problem is one :class:`ModelArgsError` naming the key and the fix.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from llava.compression.registry import add_method_arguments

METHOD_GROUP = "visual token compression"  # the argument group of add_method_arguments' flags


class ModelArgsError(ValueError):
    """A bad ``--model_args`` key or value (one line: what is wrong and how to fix it)."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own messages (bad type, bad choice), never a usage dump + exit
        raise ModelArgsError(message)


def key_of(option: str) -> str:
    """``--visual-token-num`` -> ``visual_token_num``: the ``--model_args`` key of a flag."""
    return option.lstrip("-").replace("-", "_")


def build_parser(add_model_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """A parser with the model class's flags (``add_model_arguments``) and every method flag."""
    parser = _RaisingParser(prog="--model_args", add_help=False, exit_on_error=False, allow_abbrev=False)
    add_model_arguments(parser)
    add_method_arguments(parser)
    return parser


def _option_by_key(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    options: dict[str, tuple[argparse.Action, str]] = {}
    for action in parser._actions:
        long_options = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if not long_options:
            continue
        for option in long_options:
            options.setdefault(key_of(option), (action, option))
        options.setdefault(action.dest, (action, long_options[0]))
    return options


def _text(value: Any) -> str:
    """A typed lmms-eval value back to the text argparse converts: ``[8,16,24]`` / ``"8,16,24"`` -> ``8,16,24``."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    text = str(value).strip()
    if len(text) >= 2 and (text[0], text[-1]) in {("[", "]"), ("(", ")"), ('"', '"'), ("'", "'")}:
        text = text[1:-1].strip()
    return text


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ModelArgsError(f"--model_args {key}={value!r}: expected true or false")


def to_argv(parser: argparse.ArgumentParser, model_args: dict[str, Any]) -> list[str]:
    """The argument list that ``model_args`` stands for; an unknown key is a :class:`ModelArgsError`."""
    options = _option_by_key(parser)
    unknown = sorted(k for k in model_args if k not in options)
    if unknown:
        primary = [(a, key_of(a.option_strings[0])) for a in parser._actions if a.option_strings]  # one key per flag
        methods = sorted(k for a, k in primary if a.container.title == METHOD_GROUP)
        loading = sorted(k for a, k in primary if a.container.title != METHOD_GROUP)
        raise ModelArgsError(
            f"unknown --model_args key(s) {unknown}; the model takes {loading} and the method flags "
            f"{methods} (python -m llava.eval.model_vqa_loader --help describes each)"
        )
    argv: list[str] = []
    for key, value in model_args.items():
        if value is None:
            continue
        action, option = options[key]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(option if _flag(value, key) else "--no-" + option[2:])
        elif action.nargs == 0:  # store_true
            if _flag(value, key):
                argv.append(option)
        else:
            argv.append(f"{option}={_text(value)}")
    return argv


def parse_model_args(parser: argparse.ArgumentParser, model_args: dict[str, Any]) -> argparse.Namespace:
    """Parse ``model_args`` (lmms-eval's typed keyword arguments) with ``parser``."""
    argv = to_argv(parser, model_args)
    try:
        namespace, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ModelArgsError(f"--model_args: {err}") from None
    if extra:
        raise ModelArgsError(f"--model_args: cannot read {extra}")
    return namespace
