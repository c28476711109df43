"""Conversation templates: how a LLaVA-format conversation becomes the text the LLM sees.

A conversation is LLaVA's list of turns, ``[{"from": "human", "value": "<image>\\nWhat..."},
{"from": "gpt", "value": "..."}]``. `segments` turns it into ``(text, is_target)`` pieces;
only assistant replies are targets (loss is computed on them, everything else is masked).
The model's tokenizer appends its EOS after each reply. ``<image>`` marks where the image
tokens go; `mage.data` expands it to the projector's number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    assistant: str
    sep: str = " "

    def segments(self, conversations: list[dict]) -> list[tuple[str, bool]]:
        """Split a conversation into (text, is_target) pieces; replies are the targets."""
        pieces: list[tuple[str, bool]] = []
        prefix = f"{self.system}{self.sep}" if self.system else ""
        for turn in conversations:
            role = turn.get("from")
            value = str(turn.get("value", "")).strip()
            if role in ("human", "user"):
                prefix += f"{self.user} {value}{self.sep}{self.assistant}"
            elif role in ("gpt", "assistant"):
                pieces.append((prefix, False))
                pieces.append((f" {value}", True))
                prefix = self.sep
            else:
                raise ValueError(f"unknown conversation role {role!r} (expected human/gpt)")
        return pieces

    def prompt(self, question: str) -> str:
        """The generation prompt for one user turn, ending where the reply starts."""
        return self.segments([{"from": "human", "value": question}, {"from": "gpt", "value": ""}])[
            0
        ][0]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            "vicuna_v1",
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.",
            "USER:",
            "ASSISTANT:",
        ),
        # The synthetic world's word-level tokenizer knows these few words only.
        Template("world", "", "USER:", "ASSISTANT:"),
    ]
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None
