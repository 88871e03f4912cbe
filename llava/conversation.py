"""Conversation templates of the original LLaVA evaluation (evaluation.md section 4.1).

Only the single-turn prompts the evaluations use are needed, but the template renders any number of
turns the way LLaVA's ``SeparatorStyle.TWO`` does: ``system + sep`` then, for every message,
``ROLE: text`` followed by ``sep`` (user turns) or ``sep2`` (assistant turns), and a bare ``ROLE:``
for a message whose text is ``None`` (the turn the model completes).

``mistral_instruct`` (LLaVA-1.6-Mistral) renders as LLaVA's ``SeparatorStyle.LLAMA_2`` with an empty system and empty
``sep``: every user turn becomes ``[INST] text [/INST]``, every assistant turn `` text</s>``, and the turn the model
completes adds nothing, so the evaluation prompt is ``[INST] <image>\nquestion [/INST]``.
Checked against LLaVA's own ``conversation.py`` of the 1.6 release (``conv_mistral_instruct``: system ``""``,
``sep ""``, ``sep2 "</s>"``, ``LLAMA_2`` style, whose ``<<SYS>>`` wrapper is skipped for an empty system and whose
result is stripped of ``sep``); the tokenizer adds the BOS token in front as for the other templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Conversation:
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"
    messages: list[tuple[str, str | None]] = field(default_factory=list)
    style: str = "two"  # "two" (vicuna_v1, llava_v1) or "llama_2" (mistral_instruct)

    def append_message(self, role: str, text: str | None) -> None:
        self.messages.append((role, text))

    def get_prompt(self) -> str:
        if self.style == "llama_2":
            return self._llama_2_prompt()
        seps = (self.sep, self.sep2)
        out = self.system + seps[0]
        for i, (role, text) in enumerate(self.messages):
            if text is None:
                out += role + ":"
            else:
                out += role + ": " + text + seps[i % 2]
        return out

    def _llama_2_prompt(self) -> str:
        out = ""
        for i, (_, text) in enumerate(self.messages):
            if not text:
                continue
            if i == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" + text
            if i % 2 == 0:
                out += self.sep + f"[INST] {text} [/INST]"
            else:
                out += " " + text + " " + self.sep2
        return out.lstrip(self.sep) if self.sep else out

    def copy(self) -> Conversation:
        return Conversation(self.system, self.roles, self.sep, self.sep2, list(self.messages), self.style)


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

conv_templates: dict[str, Conversation] = {
    "vicuna_v1": Conversation(system=_VICUNA_SYSTEM),
    "llava_v1": Conversation(system=_LLAVA_SYSTEM),
    "mistral_instruct": Conversation(system="", sep="", sep2="</s>", style="llama_2"),
}


def get_conversation(conv_mode: str) -> Conversation:
    """A fresh copy of the named template; unknown names raise a clear error."""
    if conv_mode not in conv_templates:
        raise ValueError(
            f"unknown conversation mode {conv_mode!r}; choose one of {sorted(conv_templates)} "
            "(LLaVA-1.5 and LLaVA-1.6-Vicuna evaluations use vicuna_v1, LLaVA-1.6-Mistral mistral_instruct)"
        )
    return conv_templates[conv_mode].copy()


def build_prompt(question: str, conv_mode: str = "vicuna_v1", with_image: bool = True) -> str:
    """The single-turn evaluation prompt: ``<system> USER: <image>\\n{question} ASSISTANT:``."""
    conv = get_conversation(conv_mode)
    text = ("<image>\n" + question) if with_image else question
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
