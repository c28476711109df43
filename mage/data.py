"""Training data in LLaVA's conversation format (LCS-558K, LLaVA-665K, the synthetic world).

A record is ``{"id", "image" (optional, relative to an image root), "conversations": [...],
"caption" (optional)}``. `ConversationDataset` reads one or more such JSON files, checks every
record up front (a bad record or a missing image fails at load time, naming the file and the
record), and `encode_conversation` turns a record into token ids with labels masked outside the
assistant replies. ``<image>`` expands to ``num_image_tokens`` copies of `IMAGE_TOKEN_ID`, a
sentinel that never reaches the embedding table: the model writes the projected image tokens
into those positions.

The MSE term needs the image's caption: a record's ``caption`` field, or for caption data
(stage 1) the first assistant reply.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mage.config import DataSource
from mage.template import IMAGE_TOKEN, Template

IMAGE_TOKEN_ID = -200  # LLaVA's convention: a placeholder id outside every vocabulary
IGNORE_INDEX = -100


class DataError(ValueError):
    """A training record or image is unusable; the message names the file and the record."""


@dataclass
class Record:
    id: str
    conversations: list[dict]
    image_path: Path | None
    caption: str | None
    source: str


def load_records(source: DataSource, caption_from_reply: bool) -> list[Record]:
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"data file not found: {path} (a LLaVA-format conversation JSON)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of records")
    root = Path(source.image_root) if source.image_root else path.parent
    records = []
    for i, item in enumerate(raw):
        rid = item.get("id", f"#{i}") if isinstance(item, dict) else f"#{i}"
        where = f"{path} record {rid!r}"
        if source.kinds is not None and isinstance(item, dict):
            if item.get("kind") not in source.kinds:
                continue
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            raise DataError(f"{where}: needs a 'conversations' list")
        turns = item["conversations"]
        if not any(t.get("from") in ("gpt", "assistant") for t in turns):
            raise DataError(f"{where}: has no assistant ('gpt') turn to learn from")
        image = None
        if item.get("image"):
            image = root / item["image"]
            if not image.is_file():
                raise DataError(f"{where}: image file not found: {image}")
        caption = item.get("caption")
        if caption is None and caption_from_reply and image is not None:
            caption = next(t["value"] for t in turns if t.get("from") in ("gpt", "assistant"))
        records.append(Record(str(rid), turns, image, caption, str(path)))
    if not records:
        wanted = f" of kinds {source.kinds}" if source.kinds is not None else ""
        raise DataError(f"{path}: no records{wanted}")
    return records


class ConversationDataset(torch.utils.data.Dataset):
    """Records from several LLaVA-format files; images decoded lazily and cached as uint8."""

    def __init__(
        self,
        sources: list[DataSource],
        *,
        caption_from_reply: bool = False,
        on_bad_image: str = "error",
        cache_images: bool = True,
    ):
        if not sources:
            raise DataError("no training data: the stage's `data` list is empty")
        self.parts = [load_records(s, caption_from_reply) for s in sources]
        self.weights = [s.weight for s in sources]
        self.records = [r for part in self.parts for r in part]
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self._cache: dict[Path, Image.Image] = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, record: Record) -> Image.Image | None:
        """The record's image, or None when it has none (or it is bad and skipping is on)."""
        if record.image_path is None:
            return None
        if self._cache is not None and record.image_path in self._cache:
            return self._cache[record.image_path]
        try:
            with Image.open(record.image_path) as im:
                image = im.convert("RGB")
        except Exception as err:  # PIL raises many types for corrupt files
            message = f"{record.source} record {record.id!r}: cannot read image {record.image_path}: {err}"
            if self.on_bad_image == "skip":
                self.skipped.append(message)
                return None
            raise DataError(message) from None
        if self._cache is not None:
            self._cache[record.image_path] = image
        return image

    def sample_indices(self, generator: torch.Generator, n: int) -> list[int]:
        """Draw ``n`` record indices: a source by its weight, then a record uniformly."""
        weights = torch.tensor(self.weights, dtype=torch.float)
        part_ids = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        offsets = [0]
        for part in self.parts:
            offsets.append(offsets[-1] + len(part))
        return [
            offsets[p] + int(torch.randint(len(self.parts[p]), (1,), generator=generator))
            for p in part_ids
        ]


def encode_text(text: str, tokenizer, num_image_tokens: int) -> list[int]:
    """Token ids of ``text`` with each ``<image>`` replaced by image placeholder ids.

    The text between image tags is tokenised at once, each stretch as its own text (as
    LLaVA's ``tokenizer_image_token`` does), with no BOS."""
    return _encode_owned(text, tokenizer, num_image_tokens, [0])[0]


def encode_conversation(
    conversations: list[dict], tokenizer, template: Template, num_image_tokens: int, max_length: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: BOS, then the whole conversation tokenised at once (LLaVA's
    ids); labels are IGNORE_INDEX except on the replies and the EOS that closes each.

    The EOS is the tokenizer's own EOS text inside the conversation (``</s>`` for Vicuna), so
    that what follows it is tokenised as it is in the whole text (LLaVA does the same)."""
    if tokenizer.eos_token is None:
        raise DataError("the tokenizer has no EOS token to close each reply with")
    pieces = template.segments(conversations, eos=tokenizer.eos_token)
    starts, offset = [], 0
    for text, _ in pieces:
        starts.append(offset)
        offset += len(text)
    text = "".join(piece for piece, _ in pieces)
    ids, owners = _encode_owned(text, tokenizer, num_image_tokens, starts)
    labels = [i if pieces[o][1] else IGNORE_INDEX for i, o in zip(ids, owners)]
    if tokenizer.bos_token_id is not None:
        ids, labels = [tokenizer.bos_token_id, *ids], [IGNORE_INDEX, *labels]
    if IMAGE_TOKEN_ID in ids[max_length:]:
        raise DataError(f"max_length={max_length} would cut the image tokens off; raise max_length")
    return ids[:max_length], labels[:max_length]


def _encode_owned(
    text: str, tokenizer, num_image_tokens: int, starts: list[int]
) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` (image tags expanded) and, per id, the index of the piece it
    belongs to; piece ``k`` starts at character ``starts[k]``. A token belongs to the piece
    that holds its last character, so " Yes" (one token) belongs to the reply."""
    ids: list[int] = []
    owners: list[int] = []
    at = 0
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            ids += [IMAGE_TOKEN_ID] * num_image_tokens
            owners += [bisect_right(starts, at - len(IMAGE_TOKEN)) - 1] * num_image_tokens
        if chunk:
            chunk_ids, ends = _tokenize_with_ends(chunk, tokenizer, starts, at)
            ids += chunk_ids
            owners += [bisect_right(starts, at + end) - 1 for end in ends]
        at += len(chunk) + len(IMAGE_TOKEN)
    return ids, owners


def _tokenize_with_ends(
    chunk: str, tokenizer, starts: list[int], at: int
) -> tuple[list[int], list[int]]:
    """Ids of ``chunk`` and, per id, a character position inside the chunk that it covers."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [e - 1 if e > s else s for s, e in enc["offset_mapping"]]
    # No offsets (a Python tokenizer): a piece's first token is where tokenising the text
    # up to the piece's start stops agreeing with tokenising the whole chunk.
    ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
    ends = [0] * len(ids)
    for start in starts:
        if at < start < at + len(chunk):
            head = tokenizer(chunk[: start - at], add_special_tokens=False)["input_ids"]
            agree = next((k for k, (a, b) in enumerate(zip(head, ids)) if a != b), len(head))
            ends[min(agree, len(ids)) :] = [start - at] * (len(ids) - min(agree, len(ids)))
    return ids, ends


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to one length: ``(ids, attention_mask)``. Generation needs left padding."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


class Collator:
    """Turns records into a training batch for `MageModel.forward`."""

    def __init__(
        self,
        tokenizer,
        template: Template,
        preprocess,
        num_image_tokens: int,
        max_length: int,
        with_captions: bool,
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.preprocess = preprocess
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.with_captions = with_captions

    def __call__(self, items: list[tuple[Record, Image.Image | None]]) -> dict:
        seqs, labels, images, captions = [], [], [], []
        for record, image in items:
            turns = record.conversations
            if image is None:  # text-only record, or a bad image skipped: drop the image tag
                turns = [{**t, "value": t["value"].replace(IMAGE_TOKEN, "").strip()} for t in turns]
            elif not any(IMAGE_TOKEN in t["value"] for t in turns):  # LLaVA: image goes first
                turns = [{**turns[0], "value": f"{IMAGE_TOKEN}\n{turns[0]['value']}"}, *turns[1:]]
            ids, lab = encode_conversation(
                turns, self.tokenizer, self.template, self.num_image_tokens, self.max_length
            )
            seqs.append(ids)
            labels.append(lab)
            if image is not None:
                images.append(image)
                captions.append(record.caption if self.with_captions else None)
        pad = self.tokenizer.pad_token_id
        input_ids, attention_mask = pad_left(seqs, pad)
        label_ids, _ = pad_left(labels, IGNORE_INDEX)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}
        if images:
            batch["pixel_values"] = self.preprocess(images)
        if any(c is not None for c in captions):
            cap_ids = [
                self.tokenizer(c, add_special_tokens=False)["input_ids"] if c else []
                for c in captions
            ]
            batch["caption_ids"], batch["caption_mask"] = pad_left(cap_ids, pad)
        return batch
