"""Training data: tokenised notes, label index lists, length-grouped batches."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset, Sampler

from clem_icd.batching import pad_batch
from clem_icd.data.labels import label_indices, multi_hot
from clem_icd.progress import progress_bar


class CodedNotes(Dataset):
    """Token ids and label indices of one split; items are (index, ids, labels)."""

    def __init__(self, documents: pl.DataFrame, codes: list[str], tokenize, batch: int = 256):
        self.ids = documents["id"].to_list()
        self.labels = label_indices(documents["codes"].to_list(), codes)
        texts = documents["text"].to_list()
        self.tokens: list[list[int]] = []
        with progress_bar("tokenizing", len(texts)) as update:
            for start in range(0, len(texts), batch):
                self.tokens += tokenize(texts[start:start + batch])
                update(len(self.tokens))
        self.num_labels = len(codes)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return i, self.tokens[i], self.labels[i]

    def targets(self) -> np.ndarray:
        return multi_hot(self.labels, self.num_labels)


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of notes of similar length (little padding), in random order each epoch.

    Shuffle, cut into mega-batches of 50 batches, sort each by length, cut into batches,
    shuffle the batches: random enough for SGD, and padding stays small. Deterministic for a
    seed and epoch (`set_epoch`)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: bool = True, shuffle: bool = True):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group, self.shuffle, self.epoch = group, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.group:
            mega = self.batch_size * 50
            order = [i for s in range(0, len(order), mega)
                     for i in sorted(order[s:s + mega], key=lambda i: -self.lengths[i])]
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def collate(items, pad_id: int, num_labels: int) -> dict:
    index, tokens, labels = zip(*items)
    input_ids, attention_mask = pad_batch(list(tokens), pad_id)
    targets = torch.zeros((len(items), num_labels), dtype=torch.float32)
    for row, label_list in enumerate(labels):
        targets[row, label_list] = 1.0
    return {"index": torch.tensor(index), "input_ids": input_ids, "attention_mask": attention_mask,
            "labels": targets}
