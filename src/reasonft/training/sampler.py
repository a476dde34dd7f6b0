"""Batch sampler that puts a fixed number of unlikelihood sequences in every global batch (§1c).

A *global batch* of `global_batch_size` sequences is what one optimiser step sees over all ranks
and accumulation steps: `micro_batch_size * world_size * accumulate_grad_batches`. Each global
batch holds exactly `ul_per_global_batch` records of the UL type and the rest CE records; its
positions are shuffled (or sorted by length, `group_by_length`), cut into micro-batches, and
micro-batch `a * world_size + rank` is rank `rank`'s `a`-th accumulation step. Every rank yields
the same number of micro-batches; a rank's share of UL records varies from step to step when
`ul_per_global_batch` is not a multiple of the world size (the official 16 of 128 on 32 GPUs).

Epoch length is driven by the CE side: `ceil(n_ce / ce_per_global_batch)` global batches, so each
CE record is seen once per epoch; the last global batch is filled up from a fresh permutation.
The UL side is drawn as a stream of permutations: when it runs out it starts a new (reshuffled)
pass, and when it has more records than an epoch needs the rest wait for a later epoch's shuffle.
Both are counted in `report`.

The order is a pure function of `(seed, epoch)`: `set_epoch(e)` (which Lightning calls at the
start of each epoch) followed by iteration reproduces epoch e exactly, e.g. after resuming.
With `ul_per_global_batch = 0`, or with only one kind of record, it is a plain shuffled batch
sampler over all records (same filling rule for the last global batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

_CE_STREAM, _UL_STREAM, _LAYOUT_STREAM = 0, 1, 2


def accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """`global_batch_size / (micro_batch_size * world_size)`, or a clear error if not an integer."""
    for name, value in (
        ("global_batch_size", global_batch_size),
        ("micro_batch_size", micro_batch_size),
        ("world_size", world_size),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"train: {name}={value!r} must be a positive integer")
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} must be a multiple of "
            f"train.micro_batch_size * world_size = {micro_batch_size} * {world_size} = {per_step} "
            "(world_size = trainer.devices * trainer.num_nodes)"
        )
    return global_batch_size // per_step


class MixedBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of record indices); U UL records per global batch."""

    def __init__(
        self,
        loss_types: Sequence[str],
        micro_batch_size: int,
        global_batch_size: int,
        ul_per_global_batch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        ul_type: str = "ul",
        lengths: Sequence[int] | None = None,
        group_by_length: bool = False,
    ) -> None:
        self.accumulate_grad_batches = accumulation_steps(
            global_batch_size, micro_batch_size, num_replicas
        )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"sampler: rank={rank} must be in [0, num_replicas={num_replicas})")
        if not 0 <= ul_per_global_batch <= global_batch_size:
            raise ValueError(
                f"train.ul_per_global_batch={ul_per_global_batch} must be in "
                f"[0, train.global_batch_size={global_batch_size}]"
            )
        if int(seed) != seed or seed < 0:
            raise ValueError(f"train.seed={seed!r} must be a non-negative integer")
        if not loss_types:
            raise ValueError("sampler: no records to sample from (the training set is empty)")
        if group_by_length and (lengths is None or len(lengths) != len(loss_types)):
            raise ValueError("sampler: group_by_length needs one length per record")

        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = int(seed)
        self.start = 0
        self.group_by_length = group_by_length
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.epoch = 0

        types = np.asarray(list(loss_types), dtype=object)
        self.ul_indices = np.flatnonzero(types == ul_type)
        self.ce_indices = np.flatnonzero(types != ul_type)
        self.all_indices = np.arange(len(types))
        n_ce, n_ul = len(self.ce_indices), len(self.ul_indices)
        self.mixed = ul_per_global_batch > 0 and n_ce > 0 and n_ul > 0
        if self.mixed and ul_per_global_batch == global_batch_size:
            raise ValueError(
                f"train.ul_per_global_batch={ul_per_global_batch} fills the whole global batch, so "
                f"the {n_ce} CE records would never be trained on; lower it below "
                f"train.global_batch_size={global_batch_size}"
            )
        self.requested_ul_per_global_batch = ul_per_global_batch
        self.ul_per_global_batch = ul_per_global_batch if self.mixed else 0
        self.ce_per_global_batch = global_batch_size - self.ul_per_global_batch
        driver = n_ce if self.mixed else len(types)
        self.steps_per_epoch = math.ceil(driver / self.ce_per_global_batch)

    @property
    def sampler(self) -> MixedBatchSampler:
        """Lightning calls `batch_sampler.sampler.set_epoch(epoch)` at every epoch start."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Micro-batches this rank yields per epoch."""
        return self.steps_per_epoch * self.accumulate_grad_batches

    def _stream(self, indices: np.ndarray, demand: int, stream: int, epoch: int) -> np.ndarray:
        """`demand` indices: successive fresh permutations of `indices`, cut to length."""
        rng = np.random.default_rng([self.seed, epoch, stream])
        passes = math.ceil(demand / len(indices))
        return np.concatenate([rng.permutation(indices) for _ in range(passes)])[:demand]

    def global_batches(self, epoch: int | None = None) -> np.ndarray:
        """All ranks' record indices for each optimiser step, laid out as `[steps, global_batch]`:
        position `j * micro_batch_size + i` is item i of micro-batch j."""
        epoch = self.epoch if epoch is None else epoch
        steps = self.steps_per_epoch
        if self.mixed:
            ce = self._stream(self.ce_indices, steps * self.ce_per_global_batch, _CE_STREAM, epoch)
            ul = self._stream(self.ul_indices, steps * self.ul_per_global_batch, _UL_STREAM, epoch)
            batches = np.concatenate(
                [ce.reshape(steps, -1), ul.reshape(steps, self.ul_per_global_batch)], axis=1
            )
        else:
            batches = self._stream(
                self.all_indices, steps * self.global_batch_size, _CE_STREAM, epoch
            ).reshape(steps, -1)
        rng = np.random.default_rng([self.seed, epoch, _LAYOUT_STREAM])
        for step in range(steps):
            batch = batches[step][rng.permutation(self.global_batch_size)]
            if self.group_by_length:
                batch = batch[np.argsort(-self.lengths[batch], kind="stable")]
            batches[step] = batch
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # `start` (set when resuming mid-epoch) skips the micro-batches this rank already trained on.
        start, self.start = self.start, 0
        micro, world = self.micro_batch_size, self.num_replicas
        position = 0
        for batch in self.global_batches():
            for accumulation in range(self.accumulate_grad_batches):
                if position >= start:
                    begin = (accumulation * world + self.rank) * micro
                    yield batch[begin : begin + micro].tolist()
                position += 1

    @property
    def report(self) -> dict[str, Any]:
        """Per-epoch composition and reuse figures (identical for every epoch).

        `cycled[stream]`: how many times the stream ran out and restarted with a new shuffle;
        `repeated_per_epoch`: draws beyond one pass; `unused_per_epoch`: records not drawn.
        Streams are `ce` and `ul` in mixed mode, `all` in plain mode.
        """

        def reuse(n: int, demand: int) -> dict[str, int]:
            return {
                "cycled": math.ceil(demand / n) - 1,
                "repeated": max(0, demand - n),
                "unused": max(0, n - demand),
            }

        steps = self.steps_per_epoch
        report: dict[str, Any] = {
            "mode": "mixed" if self.mixed else "plain",
            "steps_per_epoch": steps,
            "micro_batches_per_rank": len(self),
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "world_size": self.num_replicas,
            "global_batch_size": self.global_batch_size,
            "requested_ul_per_global_batch": self.requested_ul_per_global_batch,
            "ce_per_global_batch": self.ce_per_global_batch,
            "ul_per_global_batch": self.ul_per_global_batch,
            "n_ce": len(self.ce_indices),
            "n_ul": len(self.ul_indices),
            "group_by_length": self.group_by_length,
        }
        if self.mixed:
            streams = {
                "ce": reuse(len(self.ce_indices), steps * self.ce_per_global_batch),
                "ul": reuse(len(self.ul_indices), steps * self.ul_per_global_batch),
            }
        else:
            streams = {"all": reuse(len(self.all_indices), steps * self.global_batch_size)}
        report["cycled"] = {name: f["cycled"] for name, f in streams.items()}
        report["repeated_per_epoch"] = {name: f["repeated"] for name, f in streams.items()}
        report["unused_per_epoch"] = {name: f["unused"] for name, f in streams.items()}
        return report
