"""Training data in LLaVA's conversation format (LCS-558K, LLaVA-665K, the synthetic world).

A record is ``{"id", "image" (optional, relative to an image root), "conversations": [...],
"caption" (optional)}``. `ConversationDataset` reads one or more sources through
`mage.records` (each parsed and checked once into a memory-mapped Arrow table: a bad record or
a missing image fails at load time, naming the file and the record); indexing it gives a
record and its decoded image, nothing is cached, so a DataLoader's workers can decode in
parallel. `encode_conversation` turns a record into token ids with labels masked outside the
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

import numpy as np
import torch
from PIL import Image

from mage.config import DataSource
from mage.images import open_image, truncated_images_refused
from mage.records import DataError, record_table
from mage.template import IMAGE_TOKEN, Template

IMAGE_TOKEN_ID = -200  # LLaVA's convention: a placeholder id outside every vocabulary
IGNORE_INDEX = -100

__all__ = ["DataError", "ConversationDataset", "Collator", "Record", "encode_conversation"]


@dataclass
class Record:
    id: str
    conversations: list[dict]
    image_path: Path | None
    caption: str | None
    source: str


class ConversationDataset(torch.utils.data.Dataset):
    """Records of several LLaVA-format sources, one index space (source after source).

    ``dataset[i]`` is ``(record, image, skipped)``: the decoded RGB image (None for a text-only
    record, or a bad image when ``on_bad_image="skip"``; ``skipped`` then says why). With
    ``decode_images=False`` the image's path stands in for it (its features are cached:
    `mage.feature_cache`)."""

    def __init__(
        self,
        sources: list[DataSource],
        *,
        caption_from_reply: bool = False,
        on_bad_image: str = "error",
        records_dir: str | Path | None = None,
        decode_images: bool = True,
    ):
        if not sources:
            raise DataError("no training data: the stage's `data` list is empty")
        self.sources = list(sources)
        self.tables = [record_table(s, caption_from_reply, records_dir) for s in sources]
        self.weights = [s.weight for s in sources]
        self.sizes = [len(t) for t in self.tables]
        self.offsets = np.cumsum([0, *self.sizes])
        self.on_bad_image = on_bad_image
        self.decode_images = decode_images

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return part, index - int(self.offsets[part])

    def record(self, index: int) -> Record:
        part, row = self._locate(index)
        item = self.tables[part][row]
        image = Path(item["image"]) if item["image"] else None
        return Record(
            item["id"],
            json.loads(item["conversations"]),
            image,
            item["caption"],
            self.sources[part].path,
        )

    def ids(self, part: int) -> list[str]:
        """The record ids of one source, in order."""
        return list(self.tables[part]["id"])

    def image_paths(self) -> list[str]:
        """Every distinct image path of the data, sorted."""
        import pyarrow.compute as pc

        found: set[str] = set()
        for table in self.tables:  # in Arrow: a Python list of every row's path takes 0.4 s
            found.update(p for p in pc.unique(table.with_format("arrow")["image"]).to_pylist() if p)
        return sorted(found)

    def column(self, name: str) -> np.ndarray:
        """A column over all sources (``num_words``, ``has_image``), for length grouping."""
        return np.concatenate([np.asarray(t[name]) for t in self.tables])

    def load_image(self, record: Record) -> Image.Image | None:
        """The record's image as RGB; None when it has none (or it is bad and skipping is on)."""
        image, _ = self._load(record)
        return image

    def _load(self, record: Record) -> tuple[Image.Image | None, str | None]:
        if record.image_path is None:
            return None, None
        try:  # a truncated file is bad data, even in a process that imported lmms-eval
            with truncated_images_refused():  # converted as evaluation converts them
                return open_image(record.image_path), None
        except Exception as err:  # PIL raises many types for corrupt files
            message = f"{record.source} record {record.id!r}: cannot read image {record.image_path}: {err}"
            if self.on_bad_image == "skip":
                return None, message
            raise DataError(message) from None

    def __getitem__(self, index: int) -> tuple[Record, Image.Image | None, str | None]:
        record = self.record(index)
        if not self.decode_images:
            return record, record.image_path, None
        image, skipped = self._load(record)
        return record, image, skipped


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
    if template.bos and tokenizer.bos_token_id is not None:
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
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            # the Rust tokenizer that tokenizer(...) calls, without the Python wrapper around
            # it: half the time per call, and a training step tokenizes ~30 of them
            enc = backend.encode(chunk, add_special_tokens=False)
            return enc.ids, [e - 1 if e > s else s for s, e in enc.offsets]
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
    """Turns records into a training batch for `MageModel.forward`: ``pixel_values`` from the
    images, or with ``features`` (a `mage.feature_cache.FeatureCache`, the dataset giving
    image paths) the tower's cached outputs as ``image_features``."""

    def __init__(
        self,
        tokenizer,
        template: Template,
        preprocess,
        num_image_tokens: int,
        max_length: int,
        with_captions: bool,
        features=None,
    ):
        self.features = features
        self.tokenizer = tokenizer
        self.template = template
        self.preprocess = preprocess
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.with_captions = with_captions

    def __call__(self, items: list[tuple]) -> dict:
        """``items``: ``(record, image)`` or the dataset's ``(record, image, skipped)``. The
        batch's ``skipped`` lists the bad images left out (``on_bad_image="skip"``)."""
        seqs, labels, images, captions = [], [], [], []
        skipped = [item[2] for item in items if len(item) > 2 and item[2]]
        for record, image, *_ in items:
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
        if skipped:
            batch["skipped"] = skipped
        if self.features is not None:  # even with no image: the model then knows that no
            rows = [self.features.get(p) for p in images]  # rank runs the tower (FSDP)
            batch["image_features"] = torch.stack(rows) if rows else self.features.empty()
        elif images:
            batch["pixel_values"] = self.preprocess(images)
        if any(c is not None for c in captions):
            cap_ids = [
                self.tokenizer(c, add_special_tokens=False)["input_ids"] if c else []
                for c in captions
            ]
            batch["caption_ids"], batch["caption_mask"] = pad_left(cap_ids, pad)
        return batch
