"""The data pipeline of a training stage: which samples form each global batch, which share of
it each rank takes, and the DataLoader that decodes and collates them off the training loop.

A stage sees one *global batch* per optimizer step: ``batch_size * grad_accum`` samples, the
same set for any number of workers N, decided by ``(seed, stage, step)`` alone, so a run
resumes mid-epoch from its step and gives the same batches on 1 or 8 workers:

- `EpochStream` (``stage.epochs`` set): the records of each epoch in a permutation drawn from
  ``(seed, stage, epoch)``, epochs concatenated into one stream; step ``s`` takes positions
  ``[s*G, (s+1)*G)``, so every record appears exactly once per epoch (the last batch of a
  fractional or uneven epoch continues into the next permutation, and every batch is full).
  A source's ``weight`` repeats its records per epoch (2 = twice, 0.5 = a seeded half).
  ``group_by`` (LLaVA's ``group_by_modality_length``): ``modality_length`` lays each epoch out
  in chunks of one global batch of one modality (image or text-only), leftovers mixed, chunk
  order shuffled; ``length`` and ``modality_length`` sort each global batch by length before
  it is split, so micro-batches hold similar lengths and pad less. Grouping reorders; it never
  changes which records an epoch holds.
- `WeightedDraws` (``steps`` only): each global batch drawn with replacement, a source by its
  weight, then a record uniformly (the synthetic world's mixes). With ``group_by`` set, the
  draws of ``GROUP_STEPS`` consecutive steps are pooled, sorted by length, cut into global
  batches again and those shuffled (a megabatch, as LLaVA's length grouping does): the same
  samples, but a batch pads little (one batch is padded to its longest sample, and the
  world's tool calls are 3-4 times as long as its yes/no questions).

Rank ``r`` of N takes every N-th sample of the global batch (after the length sort: balanced
lengths), in micro-batches of at most ``batch_size``; every rank runs the same number of
micro-batches (the global batch must divide by N). `rank_loader` wraps that in a torch
DataLoader with worker processes, pinned memory and prefetch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from mage.train.seeding import stable_seed


class PipelineError(ValueError):
    """The stage's batch settings do not fit the data or the number of workers."""


class GlobalBatches:
    """The global batch of every step of a stage (indices into the stage's dataset)."""

    global_batch: int
    total_steps: int

    def indices(self, step: int) -> list[int]:
        raise NotImplementedError


GROUP_STEPS = 16  # steps whose draws `WeightedDraws` pools before sorting them by length


class WeightedDraws(GlobalBatches):
    """Batches drawn with replacement: a source by its weight, then one of its records;
    with ``num_words``, grouped by length over blocks of `GROUP_STEPS` steps."""

    def __init__(
        self, sizes, weights, global_batch: int, steps: int, seed: int, stage: str,
        num_words: np.ndarray | None = None,
    ):  # fmt: skip
        self.sizes, self.weights = list(sizes), torch.tensor(list(weights), dtype=torch.float)
        self.offsets = np.cumsum([0, *self.sizes])
        self.global_batch, self.total_steps = global_batch, steps
        self.seed, self.stage = seed, stage
        self.num_words = num_words
        self._block: tuple[int, list[list[int]]] | None = None

    def draws(self, step: int) -> list[int]:
        """Step ``step``'s own draws, before any grouping."""
        gen = torch.Generator().manual_seed(stable_seed(self.seed, self.stage, step, 0))
        parts = torch.multinomial(self.weights, self.global_batch, replacement=True, generator=gen)
        return [
            int(self.offsets[p]) + int(torch.randint(self.sizes[p], (1,), generator=gen))
            for p in parts.tolist()
        ]

    def indices(self, step: int) -> list[int]:
        if self.num_words is None:
            return self.draws(step)
        block, within = divmod(step, GROUP_STEPS)
        if self._block is None or self._block[0] != block:  # a pure function of the block
            first = block * GROUP_STEPS
            pool = [i for s in range(first, first + GROUP_STEPS) for i in self.draws(s)]
            pool.sort(key=lambda i: -int(self.num_words[i]))
            size = self.global_batch
            batches = [pool[k : k + size] for k in range(0, len(pool), size)]
            rng = np.random.default_rng(stable_seed(self.seed, self.stage, "group", block))
            self._block = (block, [batches[k] for k in rng.permutation(len(batches))])
        return list(self._block[1][within])


class EpochStream(GlobalBatches):
    """Epoch permutations (without replacement) concatenated; step s takes the next G."""

    def __init__(
        self,
        sizes,
        weights,
        global_batch: int,
        epochs: float,
        seed: int,
        stage: str,
        group_by: str = "none",
        num_words: np.ndarray | None = None,
        has_image: np.ndarray | None = None,
        max_steps: int | None = None,
    ):
        self.sizes, self.weights = list(sizes), list(weights)
        self.offsets = np.cumsum([0, *self.sizes])
        self.global_batch, self.seed, self.stage = global_batch, seed, stage
        self.group_by = group_by
        if group_by != "none" and num_words is None:
            raise PipelineError(f"group_by={group_by!r} needs the records' lengths")
        self.num_words, self.has_image = num_words, has_image
        self.epoch_length = len(self._multiset(np.random.default_rng(0)))
        if self.epoch_length == 0:
            raise PipelineError("the stage's data has no records to make an epoch of")
        steps = math.ceil(epochs * self.epoch_length / global_batch)
        self.total_steps = steps if max_steps is None else min(steps, max_steps)
        self._cache: dict[int, np.ndarray] = {}

    def _multiset(self, rng: np.random.Generator) -> np.ndarray:
        """Each source's records, ``weight`` times (the fraction as a seeded subset)."""
        parts = []
        for offset, size, weight in zip(self.offsets, self.sizes, self.weights):
            ids = np.arange(offset, offset + size)
            whole, frac = int(weight), weight - int(weight)
            parts += [ids] * whole
            if frac > 0:
                parts.append(np.sort(rng.choice(ids, size=round(frac * size), replace=False)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            rng = np.random.default_rng(stable_seed(self.seed, self.stage, "epoch", epoch))
            order = rng.permutation(self._multiset(rng))
            if self.group_by == "modality_length" and self.has_image is not None:
                order = self._modality_chunks(order, rng)
            self._cache = {epoch: order}  # one epoch at a time: bounded memory
        return self._cache[epoch]

    def _modality_chunks(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = self.global_batch
        chunks, leftovers = [], []
        for mask in (self.has_image[order], ~self.has_image[order]):
            ids = order[mask]
            full = len(ids) // size * size
            chunks += [ids[i : i + size] for i in range(0, full, size)]
            leftovers.append(ids[full:])
        rest = np.concatenate(leftovers)
        chunks += [rest[i : i + size] for i in range(0, len(rest), size)]
        return np.concatenate([chunks[i] for i in rng.permutation(len(chunks))])

    def stream(self, start: int, stop: int) -> list[int]:
        """Records at stream positions ``[start, stop)`` (epoch after epoch)."""
        out: list[int] = []
        while start + len(out) < stop:
            epoch, offset = divmod(start + len(out), self.epoch_length)
            take = min(stop - start - len(out), self.epoch_length - offset)
            out.extend(self.epoch_order(epoch)[offset : offset + take].tolist())
        return out

    def indices(self, step: int) -> list[int]:
        out = self.stream(step * self.global_batch, (step + 1) * self.global_batch)
        if self.group_by != "none":  # longest first: micro-batches of similar length
            out.sort(key=lambda i: -int(self.num_words[i]))
        return out


def global_batches(dataset, stage_cfg, seed: int, stage: str) -> GlobalBatches:
    """The stage's batches: an epoch stream when ``epochs`` is set, else weighted draws."""
    size = stage_cfg.global_batch_size
    grouped = stage_cfg.group_by != "none"
    if stage_cfg.epochs is None:
        return WeightedDraws(
            dataset.sizes, dataset.weights, size, stage_cfg.steps, seed, stage,
            num_words=dataset.column("num_words") if grouped else None,
        )  # fmt: skip
    return EpochStream(
        dataset.sizes,
        dataset.weights,
        size,
        stage_cfg.epochs,
        seed,
        stage,
        group_by=stage_cfg.group_by,
        num_words=dataset.column("num_words") if grouped else None,
        has_image=dataset.column("has_image") if grouped else None,
        max_steps=stage_cfg.steps,
    )


def micro_batches_per_step(global_batch: int, world_size: int, batch_size: int) -> int:
    if global_batch % world_size:
        raise PipelineError(
            f"the global batch (batch_size x grad_accum = {global_batch}) does not divide among "
            f"{world_size} workers; choose batch_size/grad_accum so that it does"
        )
    return math.ceil(global_batch // world_size / batch_size)


def rank_share(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Rank r's samples of a global batch: every N-th, starting at r."""
    return indices[rank::world_size]


class RankMicroBatches(torch.utils.data.Sampler):
    """This rank's micro-batches (lists of dataset indices) from ``start`` to the last step."""

    def __init__(
        self, batches: GlobalBatches, rank: int, world_size: int, batch_size: int, start=0
    ):
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.batch_size, self.start = batch_size, start
        self.per_step = micro_batches_per_step(batches.global_batch, world_size, batch_size)

    def __len__(self) -> int:
        return max(0, self.batches.total_steps - self.start) * self.per_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.batches.total_steps):
            share = rank_share(self.batches.indices(step), self.rank, self.world_size)
            for i in range(0, len(share), self.batch_size):
                yield share[i : i + self.batch_size]


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch per worker; NumPy and random follow it for any augmentation
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rank_loader(
    dataset,
    sampler: RankMicroBatches,
    collate,
    workers: int,
    pin_memory: bool,
    seed: int,
) -> torch.utils.data.DataLoader:
    """A DataLoader over this rank's micro-batches: decoding and collation in ``workers``
    processes, ``prefetch_factor`` micro-batches ahead each, pinned for a fast copy to the GPU."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_seed_worker if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
