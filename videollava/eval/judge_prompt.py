"""The judge prompt: the built-in restatement of the Video-ChatGPT prompt, or a template file.

A template is a system message (optional) and a user message, both Python ``str.format`` strings with
the fields ``{question}``, ``{answer}`` and ``{pred}`` (the upstream f-string's names, so a prompt
copied from a Python f-string keeps its doubled braces ``{{ }}`` for literal braces). Every field must
appear at least once, and no other field may.

Template file (``--judge-prompt FILE``): a UTF-8 JSON object ::

    {"system": "<system message template>" | null,   # optional; null or absent: no system message
     "user": "<user message template>"}

Identity: ``sha256`` is the SHA-256 (hex) of the UTF-8 bytes of
``json.dumps({"system": S, "user": U}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))``,
where S and U are the templates as written (before filling). It does not depend on the file's
layout, so a file that restates the built-in prompt has the built-in prompt's hash. Judge caches and
results record it, and a cache made under one prompt is never reused under another.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path

PROMPT_VERSION = "videochatgpt-zeroshot-qa/restated-v1"
FIELDS = ("question", "answer", "pred")

SYSTEM_PROMPT = (
    "You are an intelligent evaluator of question-answer pairs produced by a generative model. "
    "Your job is to compare the predicted answer with the correct answer and decide whether they "
    "match in meaning.\n"
    "INSTRUCTIONS:\n"
    "- Focus on whether the predicted answer matches the correct answer in meaning.\n"
    "- Treat synonyms and paraphrases as valid matches.\n"
    "- Judge how correct the prediction is with respect to the correct answer."
)

USER_TEMPLATE = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Give your evaluation only as a yes/no judgement and a score, where the score is an INTEGER "
    "from 0 to 5 and 5 means the highest meaningful match. "
    "Reply with a Python dictionary string with the keys 'pred' and 'score': the value of 'pred' is "
    "the string 'yes' or 'no', and the value of 'score' is an INTEGER, not a string. "
    "DO NOT PROVIDE ANY OTHER TEXT OR EXPLANATION. Only give the Python dictionary string. "
    "For example, your reply should look like this: {{'pred': 'yes', 'score': 4}}."
)


class PromptTemplateError(ValueError):
    """A judge prompt template file is missing or malformed; the message names the problem."""


def template_sha256(system: str | None, user: str) -> str:
    """The prompt identity (see the module docstring)."""
    canonical = json.dumps(
        {"system": system, "user": user}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _field_names(template: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise PromptTemplateError(
            f"{where}: not a valid format string ({e}); write literal braces as {{{{ and }}}}"
        ) from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS or spec or conversion:
            raise PromptTemplateError(
                f"{where}: unknown field {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}; the fields are {{question}}, {{answer}} and {{pred}} "
                f"(write literal braces as {{{{ and }}}})"
            )
        names.add(name)
    return names


@dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt; ``source`` says where it came from (recorded, not part of the identity)."""

    system: str | None
    user: str
    source: str

    @property
    def sha256(self) -> str:
        return template_sha256(self.system, self.user)

    def messages(self, question: str, answer: str, pred: str) -> list[dict[str, str]]:
        """The chat messages for one item (system first when there is one)."""
        fields = {"question": question, "answer": answer, "pred": pred}
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system.format(**fields)})
        messages.append({"role": "user", "content": self.user.format(**fields)})
        return messages


def builtin_prompt() -> PromptTemplate:
    """The built-in restated Video-ChatGPT prompt."""
    return PromptTemplate(system=SYSTEM_PROMPT, user=USER_TEMPLATE, source=f"builtin:{PROMPT_VERSION}")


def load_prompt_template(path: str | os.PathLike) -> PromptTemplate:
    """Read a ``--judge-prompt`` file (format in the module docstring)."""
    path = Path(path)
    where = f"--judge-prompt {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptTemplateError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptTemplateError(f"{where}: cannot read it ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptTemplateError(
            f'{where}: not valid JSON ({e}); expected {{"system": "...", "user": "..."}}'
        ) from None
    if not isinstance(obj, dict):
        raise PromptTemplateError(f'{where}: expected a JSON object {{"system": "...", "user": "..."}}')
    unknown = sorted(set(obj) - {"system", "user"})
    if unknown:
        raise PromptTemplateError(f"{where}: unknown keys {unknown}; only 'system' and 'user' are read")
    system, user = obj.get("system"), obj.get("user")
    if not isinstance(user, str) or not user.strip():
        raise PromptTemplateError(f"{where}: 'user' must be a non-empty string (the user message template)")
    if system is not None and not isinstance(system, str):
        raise PromptTemplateError(f"{where}: 'system' must be a string or null")
    used = _field_names(user, f"{where} (user)")
    if system is not None:
        used |= _field_names(system, f"{where} (system)")
    missing = [f"{{{name}}}" for name in FIELDS if name not in used]
    if missing:
        raise PromptTemplateError(
            f"{where}: the template never uses {', '.join(missing)}; the judge would not see them"
        )
    return PromptTemplate(system=system, user=user, source=str(path))
