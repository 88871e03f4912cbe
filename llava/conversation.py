"""Conversation templates of the original LLaVA evaluation (evaluation.md section 4.1).

Only the single-turn prompts the evaluations use are needed, but the template renders any number of
turns the way LLaVA's ``SeparatorStyle.TWO`` does: ``system + sep`` then, for every message,
``ROLE: text`` followed by ``sep`` (user turns) or ``sep2`` (assistant turns), and a bare ``ROLE:``
for a message whose text is ``None`` (the turn the model completes).
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

    def append_message(self, role: str, text: str | None) -> None:
        self.messages.append((role, text))

    def get_prompt(self) -> str:
        seps = (self.sep, self.sep2)
        out = self.system + seps[0]
        for i, (role, text) in enumerate(self.messages):
            if text is None:
                out += role + ":"
            else:
                out += role + ": " + text + seps[i % 2]
        return out

    def copy(self) -> Conversation:
        return Conversation(self.system, self.roles, self.sep, self.sep2, list(self.messages))


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
}


def get_conversation(conv_mode: str) -> Conversation:
    """A fresh copy of the named template; unknown names raise a clear error."""
    if conv_mode not in conv_templates:
        raise ValueError(
            f"unknown conversation mode {conv_mode!r}; choose one of {sorted(conv_templates)} "
            "(LLaVA-1.5 evaluations use vicuna_v1)"
        )
    return conv_templates[conv_mode].copy()


def build_prompt(question: str, conv_mode: str = "vicuna_v1", with_image: bool = True) -> str:
    """The single-turn evaluation prompt: ``<system> USER: <image>\\n{question} ASSISTANT:``."""
    conv = get_conversation(conv_mode)
    text = ("<image>\n" + question) if with_image else question
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
