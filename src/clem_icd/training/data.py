"""Training data: tokenised notes, label index lists, length-grouped batches, and batches cut by
a token budget."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset, Sampler

from clem_icd.batching import pad_batch, token_budget_batches
from clem_icd.data.labels import label_indices, multi_hot
from clem_icd.errors import ClemError
from clem_icd.training.token_cache import TokenizedNotes


class CodedNotes(Dataset):
    """Token ids (memory-mapped, from the token cache) and label indices of one split; items are
    (index, ids, labels)."""

    def __init__(self, documents: pl.DataFrame, codes: list[str], tokens: TokenizedNotes):
        self.ids = documents["id"].to_list()
        if len(tokens) != len(self.ids):
            raise ClemError(f"{tokens.folder}: {len(tokens)} tokenised notes for {len(self.ids)} documents")
        self.labels = label_indices(documents["codes"].to_list(), codes)
        self.tokens = tokens
        self.lengths: list[int] = tokens.lengths().tolist()
        self.num_labels = len(codes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return i, self.tokens[i].astype(np.int64), self.labels[i]

    def targets(self) -> np.ndarray:
        return multi_hot(self.labels, self.num_labels)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random | None,
                           group: bool, short_last: bool = False) -> list[list[int]]:
    """Note indices cut into batches of batch_size: shuffled by `rng` (None: in order); with
    `group`, sorted by length within mega-batches of 50 batches before the cut (little padding),
    and the batches shuffled after it (else each mega-batch would run from its longest notes to
    its shortest). `short_last`: a smaller last batch stays last after that shuffle."""
    order = list(range(len(lengths)))
    if rng is not None:
        rng.shuffle(order)
    if group:
        mega = batch_size * 50
        order = [i for s in range(0, len(order), mega) for i in sorted(order[s:s + mega], key=lambda i: -lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if rng is not None and group:
        short = batches.pop() if short_last and batches and len(batches[-1]) < batch_size else None
        rng.shuffle(batches)
        batches += [short] if short else []
    return batches


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of notes of similar length (little padding), in random order each epoch.

    Shuffle, cut into mega-batches of 50 batches, sort each by length, cut into batches,
    shuffle the batches: random enough for SGD, and padding stays small. Deterministic for a
    seed and epoch (`set_epoch`). `skip`: batches of the epoch to leave out at its start (what a
    resumed run already did); set it after `set_epoch`, for the epoch it applies to."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: bool = True, shuffle: bool = True):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group, self.shuffle, self.epoch, self.skip = group, shuffle, 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # skipping belongs to the epoch it was set for
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch) if self.shuffle else None
        # The short batch last: Accelerate's sharding of these batches between processes
        # (BatchSamplerShard, even_batches) leaves out a whole round of batches, one per process,
        # when a short one ends a round in the middle of the epoch; at the end it completes the
        # short batch with the epoch's first notes instead, and every process gets as many batches.
        return length_grouped_batches(self.lengths, self.batch_size, rng, self.group, short_last=True)[self.skip:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) - self.skip


@dataclass(frozen=True)
class MicroBatch:
    """Notes of one forward pass. `counted` False: a stand-in note whose loss is weighted 0 (and
    whose scores are dropped), run only so that every process runs as many forward passes and
    joins the same collectives (equal_micro_batches)."""

    indices: list[int]
    counted: bool = True


@dataclass(frozen=True)
class GlobalBatch:
    """One optimizer step: how many notes it holds over all processes, and this process's
    share of them cut into micro-batches."""

    notes: int
    micro_batches: list[MicroBatch]


def process_share(notes: list[int], lengths: list[int], process_index: int, num_processes: int) -> list[int]:
    """This process's disjoint share of `notes`: longest first, dealt in turn, so every process
    gets a similar number of tokens and its share comes sorted by length (little padding)."""
    longest_first = sorted(notes, key=lambda i: -lengths[i])
    return longest_first[process_index::num_processes]


def budget_micro_batches(notes: list[int], lengths: list[int], max_tokens: int,
                         process_index: int = 0, num_processes: int = 1) -> list[list[int]]:
    """This process's share of `notes` in micro-batches of padded cost <= max_tokens (a note
    longer than the budget alone)."""
    share = process_share(notes, lengths, process_index, num_processes)
    return token_budget_batches(share, lambda i: lengths[i], max_tokens)


def equal_micro_batches(notes: list[int], lengths: list[int], max_tokens: int,
                        process_index: int = 0, num_processes: int = 1) -> list[MicroBatch]:
    """This process's `budget_micro_batches` of `notes`, then stand-ins (the shortest of `notes`,
    `counted` False) up to the number of micro-batches of the busiest process, so that every
    process runs as many forward passes. Under FSDP (and DeepSpeed ZeRO-3) every forward pass
    gathers the weights in collectives that all processes must join: a process that stopped
    early would leave the others waiting forever. Each process computes every process's share
    (they depend only on `notes` and `lengths`), so no collective is needed to agree."""
    if not notes:
        return []
    counts = [len(budget_micro_batches(notes, lengths, max_tokens, p, num_processes)) for p in range(num_processes)]
    own = budget_micro_batches(notes, lengths, max_tokens, process_index, num_processes)
    shortest = min(notes, key=lambda i: lengths[i])
    return [MicroBatch(m) for m in own] + [MicroBatch([shortest], counted=False)] * (max(counts) - len(own))


class TokenBudgetBatches:
    """Global batches of `batch_size` notes (the last may be smaller), each process's share of
    each cut into micro-batches by a token budget: as many notes per forward pass as fit, notes x
    the longest one's tokens <= max_batch_tokens.

    The epoch's order is random (seeded by seed and epoch, the same on every process); with
    `group`, as LengthGroupedBatches, notes are sorted by length within mega-batches of 50
    global batches before the cut and the global batches shuffled, so that a global batch holds
    notes of similar length. Every process computes the same global batches and takes its own
    share (`process_share`), so the shares are disjoint and together cover the epoch once."""

    def __init__(self, lengths: list[int], batch_size: int, max_batch_tokens: int, seed: int,
                 process_index: int = 0, num_processes: int = 1, group: bool = True):
        self.lengths, self.batch_size, self.max_batch_tokens = lengths, batch_size, max_batch_tokens
        self.seed, self.group, self.epoch = seed, group, 0
        self.process_index, self.num_processes = process_index, num_processes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches over all processes, in order."""
        return length_grouped_batches(self.lengths, self.batch_size, random.Random(self.seed + self.epoch), self.group)

    def steps(self) -> list[GlobalBatch]:
        """This process's micro-batches of each global batch of the epoch."""
        return [self._share_of(batch) for batch in self.global_batches()]

    def _share_of(self, batch: list[int]) -> GlobalBatch:
        # Padded with stand-ins to the busiest process's count of micro-batches: also where a
        # process has no share at all (fewer notes than processes, a small last batch).
        return GlobalBatch(len(batch), equal_micro_batches(batch, self.lengths, self.max_batch_tokens,
                                                           self.process_index, self.num_processes))

    def __len__(self) -> int:
        """Optimizer steps per epoch: ceil(notes / batch_size), known before the epoch runs."""
        return -(-len(self.lengths) // self.batch_size)


def collate(items, pad_id: int, num_labels: int) -> dict:
    index, tokens, labels = zip(*items)
    input_ids, attention_mask = pad_batch(list(tokens), pad_id)
    targets = torch.zeros((len(items), num_labels), dtype=torch.float32)
    for row, label_list in enumerate(labels):
        targets[row, label_list] = 1.0
    return {"index": torch.tensor(index), "input_ids": input_ids, "attention_mask": attention_mask,
            "labels": targets}
