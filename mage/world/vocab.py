"""The synthetic world's word-level tokenizer, built in code (no files, no downloads).

`world_tokenizer()` returns a `transformers.PreTrainedTokenizerFast` over a `tokenizers`
WordLevel model whose vocabulary is every word the world writes (captions, questions,
answers, lmms-eval's post-prompts, option letters, numbers, "Yes"/"No"), the conversation
template's "USER:"/"ASSISTANT:", and the tool-call vocabulary (see `TOOL_WORDS`).

Spacing is part of the token: the pre-tokenizer splits text into words, single punctuation
marks, newlines and lone spaces, and Metaspace turns a leading space into "▁" ("▁red" and
"red" are different tokens). The Metaspace decoder turns "▁" back into a space and the
pieces are concatenated, so ``decode(encode(text)) == text`` exactly for every text made of
known words, JSON tool calls included. Unknown words become ``<unk>``.

The vocabulary order is fixed (sorted), so token ids are the same on every machine.
"""

from __future__ import annotations

import re
import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mage.template import IMAGE_TOKEN
from mage.world import text

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE_TOKEN)
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
SPACE = "▁"

# Tool-call vocabulary contract (shared with mage.tools.data). Calls are written
#   <tool_call>{"name": "image_generation", "arguments": {"prompt": "..."}}</tool_call>
TOOL_NAMES = ("image_generation", "image_editing", "text_to_speech")
TOOL_ARGUMENT_KEYS = ("prompt", "instruction", "text")
TOOL_WORDS = (
    "name arguments draw generate create paint render make change turn recolor replace "
    "remove add say read speak describe tell out loud aloud picture image scene photo me with "
    "and a an the at of in on to into is it what please can you there top bottom left right "
    "upper lower corner this that show"
).split()
TEMPLATE_WORDS = ("USER", "ASSISTANT")
EXTRA_WORDS = tuple(str(i) for i in range(21))

# A word ([A-Za-z0-9_]+) or one other non-space character, each with an optional leading
# space; a newline; a lone space (e.g. before an added token such as <image>).
_PIECE = r" ?[A-Za-z0-9_]+| ?[^\sA-Za-z0-9_]|\n| "
_WORD = re.compile(r"[A-Za-z0-9_]+")
_PLACEHOLDER = re.compile(r"\{\w+\}")


def world_words() -> list[str]:
    """Every word of the vocabulary (without spacing variants), sorted."""
    words: set[str] = set(TOOL_NAMES) | set(TOOL_ARGUMENT_KEYS) | set(TOOL_WORDS)
    words |= set(TEMPLATE_WORDS) | set(EXTRA_WORDS)
    for phrase in text.vocabulary_text():
        words |= set(_WORD.findall(_PLACEHOLDER.sub(" ", phrase)))
    # Sentence-initial and mid-sentence forms of every alphabetic word.
    words |= {w.capitalize() for w in words if w.isalpha() and w.islower()}
    words |= {w.lower() for w in words if w.isalpha() and w[:1].isupper() and w[1:].islower()}
    return sorted(words)


def world_vocab() -> dict[str, int]:
    """Token -> id: special tokens first, then every piece with and without its space."""
    pieces = [*world_words(), *string.punctuation]
    tokens = [*SPECIAL_TOKENS, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, "\n", SPACE]
    for piece in pieces:
        tokens += [piece, SPACE + piece]
    return {tok: i for i, tok in enumerate(tokens)}


def world_tokenizer() -> PreTrainedTokenizerFast:
    """The world's tokenizer; deterministic, exact round trip for known words."""
    backend = Tokenizer(models.WordLevel(vocab=world_vocab(), unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PIECE), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=False),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never", split=False)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[IMAGE_TOKEN],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        padding_side="right",
    )
