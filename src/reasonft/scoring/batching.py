"""Length-sorted batching under a token budget, first-fit packing into rows, right padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group item indices, longest first, so that `len(batch) * max_length <= batch_tokens`.

    An item longer than the budget gets a batch of its own (it cannot be split here); ties in
    length keep the original order, so the batching is deterministic.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens={batch_tokens}: must be a positive number of tokens")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and (len(current) + 1) * new_longest > batch_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items into bins of `capacity` (longest first, each into the first bin with room).

    Items longer than `capacity` get a bin of their own. Returns the item indices of each bin.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pad_right(
    seqs: Sequence[np.ndarray | list[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `[B, longest]` ids and the matching 0/1 attention mask."""
    longest = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), longest), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        att[b, : len(s)] = 1
    return ids, att
