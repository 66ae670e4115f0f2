"""Token id lists → padded tensors, and batches cut by a token budget: the one padding rule and
the one budget rule of training and inference."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest; returns (input_ids, attention_mask)."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)  # a list or an array
        mask[row, : len(seq)] = 1
    return ids, mask


def token_budget_batches(items: list[T], length: Callable[[T], int], max_tokens: int) -> list[list[T]]:
    """`items` cut, in their order, into runs whose padded cost (items x the longest one's
    length, what a padded batch computes) stays within `max_tokens`. An item longer than the
    budget makes a batch alone: it cannot be split here, and leaving it out would lose a note.
"""
    batches: list[list[T]] = []
    current: list[T] = []
    longest = 0
    for item in items:
        tokens = length(item)
        if current and (len(current) + 1) * max(longest, tokens) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, tokens)
    if current:
        batches.append(current)
    return batches
