"""Conversation templates: how a LLaVA-format conversation becomes the text the LLM sees.

A conversation is LLaVA's list of turns, ``[{"from": "human", "value": "<image>\\nWhat..."},
{"from": "gpt", "value": "..."}]``. `Template.segments` renders it as ``(text, is_target)``
pieces whose concatenation is the whole conversation text; only assistant replies (and the
end-of-sequence token that closes each) are targets. For ``vicuna_v1`` that text is exactly
LLaVA's ``conv_vicuna_v1.get_prompt()``:

    SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>

``smollm2`` is SmolLM2-Instruct's ChatML, exactly what its tokenizer's own chat template
writes (the conversation opens with ``<|im_start|>``, which is also that tokenizer's BOS, so
the template writes it and no BOS is added):

    <|im_start|>system\nSYSTEM<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n...

`mage.data.encode_conversation` tokenises that text at once, as LLaVA does (tokenising the
pieces one by one would put a stray "▁" before every reply and every later "USER:" with a
SentencePiece tokenizer), and masks the labels outside the target pieces. ``<image>`` marks
where the image tokens go; `mage.data` expands it to the projector's number of tokens.
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
    sep: str = " "  # after the system prompt and between a user turn and the assistant label
    turn_sep: str = ""  # after the end-of-sequence that closes a reply, before the next turn
    user_lead: str = " "  # between the user label and the question
    reply_lead: str = " "  # before a reply (a target: Vicuna's space starts the reply's token)
    bos: bool = True  # prepend the tokenizer's BOS (False where the template writes it)

    def segments(self, conversations: list[dict], eos: str = "") -> list[tuple[str, bool]]:
        """The conversation as (text, is_target) pieces; each reply ends with ``eos``.

        ``"".join`` of the texts is the whole conversation; a reply piece is ``reply_lead +
        reply + eos`` (for Vicuna and the world the space belongs to the reply's first token
        in every tokenizer here)."""
        pieces: list[tuple[str, bool]] = []
        prefix = f"{self.system}{self.sep}" if self.system else ""
        for turn in conversations:
            role = turn.get("from")
            value = str(turn.get("value", "")).strip()
            if role in ("human", "user"):
                prefix += f"{self.user}{self.user_lead}{value}{self.sep}{self.assistant}"
            elif role in ("gpt", "assistant"):
                pieces.append((prefix, False))
                pieces.append((f"{self.reply_lead}{value}{eos}", True))
                prefix = self.turn_sep
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
        # LLaVA's conv_vicuna_v1 (sep " ", sep2 "</s>", nothing between "</s>" and "USER:").
        Template(
            "vicuna_v1",
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.",
            "USER:",
            "ASSISTANT:",
        ),
        # The synthetic world's word-level tokenizer knows these few words only; its LLM was
        # pretrained with a space after each reply's end-of-sequence.
        Template("world", "", "USER:", "ASSISTANT:", turn_sep=" "),
        # SmolLM2-Instruct's chat template (ChatML, its default system prompt); the reply's
        # EOS is <|im_end|>, that tokenizer's EOS.
        Template(
            "smollm2",
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face",
            "<|im_start|>user",
            "<|im_start|>assistant\n",
            sep="<|im_end|>\n",
            turn_sep="\n",
            user_lead="\n",
            reply_lead="",
            bos=False,
        ),
    ]
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None
