"""Per-step totals, carried with every micro-batch so that each loss term is normalised by its own
count over the whole optimiser step (METHODS §1c), whatever the micro-batch size, accumulation
and world size.

The batch sampler knows every step's sequences before the step starts; `StepTotalsBatches` tags
each record index of a micro-batch with its step's `StepTotals`, `RecordsWithStepTotals` hands the
tag on with the record, and `CollateWithStepTotals` puts it in the collated batch as
`batch["step_totals"]`. The records and the collator themselves stay unaware of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from torch.utils.data import Dataset

if TYPE_CHECKING:
    from reasonft.training.sampler import MixedBatchSampler


class StepTotals(NamedTuple):
    """One optimiser step over all its micro-batches and ranks, per record `loss_type`:
    `sequences` with at least one scored token, and scored `tokens`. (A named tuple, which
    Lightning's batch transfer rebuilds; it refuses frozen dataclasses.)"""

    sequences: Mapping[str, int]
    tokens: Mapping[str, int]
    # The step's size against a full one (C + U sequences); below 1 only for the partial last
    # step of train.epoch_end=official, whose terms still count as a full step's share.
    step_fraction: float = 1.0

    def units(self, loss_type: str, reduction: str) -> int:
        """The denominator of a term with this `loss_type` and reduction (`token`/`sequence`)."""
        counts = self.tokens if reduction == "token" else self.sequences
        return int(counts.get(loss_type, 0))


class StepTotalsBatches:
    """The batch sampler a DataLoader gets: `sampler`'s micro-batches, each index paired with its
    step's totals. `sampler` is what Lightning calls `set_epoch` on and what resuming positions."""

    def __init__(self, sampler: MixedBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, StepTotals]]]:
        for indices, totals in self.sampler.micro_batches_with_totals():
            yield [(index, totals) for index in indices]


class RecordsWithStepTotals(Dataset):
    """`records[index]` for a key `(index, totals)`, returned as `(record, totals)`."""

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, StepTotals]) -> tuple[Any, StepTotals]:
        index, totals = key
        return self.records[int(index)], totals


class CollateWithStepTotals:
    """Collates the records with `collate` and adds their (shared) step totals."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[Any, StepTotals]]) -> dict[str, Any]:
        totals = items[0][1]
        if any(other != totals for _, other in items):
            raise ValueError("collate: a micro-batch holds records of different optimiser steps")
        batch = self.collate([record for record, _ in items])
        batch["step_totals"] = totals
        return batch
