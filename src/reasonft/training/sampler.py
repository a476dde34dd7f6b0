"""Batch sampler that builds every optimiser step from exactly C CE and U UL sequences (METHODS §1c).

One optimiser step sees `C + U = micro_batch_size * world_size * accumulate_grad_batches`
sequences over all ranks and accumulation steps (the official OXA_FULL: 128 CE + 128 UL; SFT,
SFT_LP and OXA_MLE: 128 CE). Inside a step the U UL sequences are spread as evenly as possible:
every micro-batch holds floor or ceil of U / (micro-batches per step) of them, and so does, up to
one, every micro-step (all ranks together) and every rank over the step; which micro-batches get
the extra one changes from step to step. With `group_by_length` the step's sequences are instead
sorted by length before they are cut into micro-batches (less padding; a micro-batch's share of
UL then follows the lengths — the step's totals and its objective do not change).
Micro-batch `a * world_size + rank` of a step is rank `rank`'s `a`-th accumulation step.

Epoch end (`epoch_end`):
- `shortest`: a fresh permutation of each pool per epoch, cut into steps until either pool
  cannot fill another step (drop_last); the records left over wait for a later epoch's shuffle.
  The official rule counted in whole steps (`official` below is the official sampler exactly).
- `ce`: the CE pool sets the epoch, `ceil(n_ce / C)` steps, each CE record once (the last step
  is topped up from a fresh permutation); the UL side is a stream of permutations, restarted with
  a new shuffle when it runs out.
- `official`: the official sampler's epoch, which counts micro-steps (all ranks' micro-batches
  at one accumulation step: C / A CE and U / A UL sequences, A the accumulation): each pool's
  permutation is cut into micro-steps until either pool cannot fill another (so `n mod (C / A)`
  CE records are left out, not `n mod C`), and the micro-steps are grouped into optimiser steps
  of A; the last step of the epoch takes the micro-steps left over (fewer than A). Its terms are
  still divided by the full step's counts, as the official loss divides every micro-batch by
  the full accumulation: a partial step of k micro-steps weighs k / A of a full one
  (`StepTotals.step_fraction`). At 50,000 + 50,000 records and 128 + 128 per step that is 391
  steps and 50,000 records per epoch, against 390 and 49,920 under `shortest`.
`report` states, per pool and epoch, how many records were used, repeated and left out.

The order is a pure function of `(seed, epoch)`: `set_epoch(e)` (which Lightning calls at the
start of each epoch) followed by iteration reproduces epoch e exactly, e.g. after resuming.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from reasonft.training.step_totals import StepTotals

_CE_STREAM, _UL_STREAM, _LAYOUT_STREAM = 0, 1, 2
EPOCH_END_RULES = ("shortest", "ce", "official")


def accumulation_steps(sequences_per_step: int, micro_batch_size: int, world_size: int) -> int:
    """`sequences_per_step / (micro_batch_size * world_size)`, or a clear error if not an integer."""
    for name, value in (
        ("micro_batch_size", micro_batch_size),
        ("world_size", world_size),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"train: {name}={value!r} must be a positive integer")
    per_micro_step = micro_batch_size * world_size
    if int(sequences_per_step) != sequences_per_step or sequences_per_step < 1:
        raise ValueError(
            f"train.ce_per_step + train.ul_per_step = {sequences_per_step!r} must be a positive "
            "integer"
        )
    if sequences_per_step % per_micro_step:
        raise ValueError(
            f"train.ce_per_step + train.ul_per_step = {sequences_per_step} must be a multiple of "
            f"train.micro_batch_size * world_size = {micro_batch_size} * {world_size} = "
            f"{per_micro_step} (world_size = trainer.devices * trainer.num_nodes)"
        )
    return sequences_per_step // per_micro_step


def spread_counts(total: int, micro_steps: int, ranks: int) -> np.ndarray:
    """`[micro_steps, ranks]` counts summing to `total`: each cell floor or ceil of the mean, each
    row and each column too (the extras go down wrapped diagonals, shifted by one per wrap)."""
    cells = micro_steps * ranks
    counts = np.full((micro_steps, ranks), total // cells, dtype=np.int64)
    period = math.lcm(micro_steps, ranks)
    for k in range(total % cells):
        counts[k % micro_steps, (k + k // period) % ranks] += 1
    return counts


class MixedBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of record indices); C CE + U UL per step."""

    def __init__(
        self,
        loss_types: Sequence[str],
        micro_batch_size: int,
        ce_per_step: int,
        ul_per_step: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch_end: str = "shortest",
        ul_type: str = "ul",
        scored_tokens: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
        group_by_length: bool = False,
    ) -> None:
        for name, value in (("ce_per_step", ce_per_step), ("ul_per_step", ul_per_step)):
            if int(value) != value or value < 0:
                raise ValueError(f"train.{name}={value!r} must be a non-negative integer")
        ce_per_step, ul_per_step = int(ce_per_step), int(ul_per_step)
        self.accumulate_grad_batches = accumulation_steps(
            ce_per_step + ul_per_step, micro_batch_size, num_replicas
        )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"sampler: rank={rank} must be in [0, num_replicas={num_replicas})")
        if epoch_end not in EPOCH_END_RULES:
            raise ValueError(f"train.epoch_end={epoch_end!r}; choose one of {EPOCH_END_RULES}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"train.seed={seed!r} must be a non-negative integer")
        if not loss_types:
            raise ValueError("sampler: no records to sample from (the training set is empty)")
        for name, values in (("lengths", lengths), ("scored_tokens", scored_tokens)):
            if values is not None and len(values) != len(loss_types):
                raise ValueError(f"sampler: {name} needs one value per record")
        if group_by_length and lengths is None:
            raise ValueError("sampler: group_by_length needs one length per record")

        self.micro_batch_size = micro_batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = int(seed)
        self.epoch_end = epoch_end
        self.ce_per_step = ce_per_step
        self.ul_per_step = ul_per_step
        self.sequences_per_step = ce_per_step + ul_per_step
        self.group_by_length = group_by_length
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.start = 0
        self.epoch = 0

        self.types = np.asarray(list(loss_types), dtype=object)
        self.ul_indices = np.flatnonzero(self.types == ul_type)
        self.ce_indices = np.flatnonzero(self.types != ul_type)
        self.type_names = sorted(set(self.types.tolist()))
        self.type_ids = np.asarray([self.type_names.index(t) for t in self.types.tolist()])
        self.scored_tokens = (
            np.ones(len(self.types), dtype=np.int64)
            if scored_tokens is None
            else np.asarray(scored_tokens, dtype=np.int64)
        )
        self._check_pools(len(self.ce_indices), len(self.ul_indices))
        if epoch_end == "official":
            for name, value in (("ce_per_step", ce_per_step), ("ul_per_step", ul_per_step)):
                if value % self.accumulate_grad_batches:
                    raise ValueError(
                        f"train.epoch_end=official counts micro-steps of C / A CE and U / A UL "
                        f"sequences, but train.{name}={value} is not a multiple of the "
                        f"accumulation A = {self.accumulate_grad_batches}"
                    )
        self.micro_steps_per_epoch = self._micro_steps_per_epoch()
        self.steps_per_epoch = -(-self.micro_steps_per_epoch // self.accumulate_grad_batches)
        self.ul_per_micro_batch = spread_counts(
            ul_per_step, self.accumulate_grad_batches, num_replicas
        )

    def _check_pools(self, n_ce: int, n_ul: int) -> None:
        """Every pool has a positive share of each step, and every positive share has records."""
        for kind, n, per_step in (("ce", n_ce, self.ce_per_step), ("ul", n_ul, self.ul_per_step)):
            key = f"train.{kind}_per_step"
            if per_step > 0 and n == 0:
                raise ValueError(
                    f"{key}={per_step} but the training set has no {kind.upper()} records; set "
                    f"{key}=0 (and the other share to the whole step)"
                )
            if per_step == 0 and n > 0:
                raise ValueError(
                    f"{key}=0 but the training set has {n} {kind.upper()} records the loss trains "
                    f"on, which would never be seen; give them a share of every step ({key}) or "
                    "pick a loss without that term (e.g. loss=sft drops UL records)"
                )

    def _micro_steps_per_epoch(self) -> int:
        """Micro-steps (one micro-batch on every rank) per epoch."""
        accumulation = self.accumulate_grad_batches
        if self.epoch_end != "official":
            return self._steps_per_epoch() * accumulation
        pools = [
            (kind, len(indices), per_step // accumulation)
            for kind, indices, per_step in (
                ("ce", self.ce_indices, self.ce_per_step),
                ("ul", self.ul_indices, self.ul_per_step),
            )
            if per_step > 0
        ]
        micro_steps = min(n // share for _, n, share in pools)
        if micro_steps == 0:
            kind, n, share = min(pools, key=lambda pool: pool[1] // pool[2])
            raise ValueError(
                f"train.{kind}_per_step: only {n} {kind.upper()} records, not one micro-step of "
                f"{share} under train.epoch_end=official; lower train.{kind}_per_step"
            )
        return micro_steps

    def micro_steps_in(self, step: int) -> int:
        """Micro-steps of optimiser step `step` of an epoch (fewer than A only in the last step
        of an `official` epoch)."""
        done = step * self.accumulate_grad_batches
        return min(self.accumulate_grad_batches, self.micro_steps_per_epoch - done)

    def _steps_per_epoch(self) -> int:
        pools = [
            (kind, len(indices), per_step)
            for kind, indices, per_step in (
                ("ce", self.ce_indices, self.ce_per_step),
                ("ul", self.ul_indices, self.ul_per_step),
            )
            if per_step > 0
        ]
        if self.epoch_end == "ce":
            if self.ce_per_step == 0:
                raise ValueError(
                    "train.epoch_end=ce lets the CE pool set the epoch, but train.ce_per_step=0; "
                    "use train.epoch_end=shortest"
                )
            return math.ceil(len(self.ce_indices) / self.ce_per_step)
        steps = min(n // per_step for _, n, per_step in pools)
        if steps == 0:
            kind, n, per_step = min(pools, key=lambda pool: pool[1] // pool[2])
            raise ValueError(
                f"train.{kind}_per_step={per_step} but only {n} {kind.upper()} records: not one "
                f"full step under train.epoch_end=shortest; lower train.{kind}_per_step"
                + (" or set train.epoch_end=ce (UL records then repeat)" if kind == "ul" else "")
            )
        return steps

    @property
    def sampler(self) -> MixedBatchSampler:
        """Lightning calls `batch_sampler.sampler.set_epoch(epoch)` at every epoch start."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Micro-batches this rank yields per epoch."""
        return self.micro_steps_per_epoch

    def _draws(self, indices: np.ndarray, demand: int, stream: int, epoch: int) -> np.ndarray:
        """`demand` indices: successive fresh permutations of `indices`, cut to length."""
        if demand == 0:
            return indices[:0]
        rng = np.random.default_rng([self.seed, epoch, stream])
        passes = math.ceil(demand / len(indices))
        return np.concatenate([rng.permutation(indices) for _ in range(passes)])[:demand]

    def global_batches(self, epoch: int | None = None) -> np.ndarray | list[np.ndarray]:
        """All ranks' record indices for each optimiser step, laid out as `[steps, C + U]`:
        position `j * micro_batch_size + i` is item i of micro-batch j. (A list of rows when the
        last step of an `official` epoch is partial: that row is shorter.)"""
        epoch = self.epoch if epoch is None else epoch
        steps, micro, accumulation = self.steps_per_epoch, self.micro_batch_size, self.accumulate_grad_batches
        ce_share, ul_share = self.ce_per_step // accumulation, self.ul_per_step // accumulation
        micro_steps = self.micro_steps_per_epoch
        if self.epoch_end == "official":
            ce_demand, ul_demand = micro_steps * ce_share, micro_steps * ul_share
        else:
            ce_demand, ul_demand = steps * self.ce_per_step, steps * self.ul_per_step
        ce = self._draws(self.ce_indices, ce_demand, _CE_STREAM, epoch)
        ul = self._draws(self.ul_indices, ul_demand, _UL_STREAM, epoch)
        rng = np.random.default_rng([self.seed, epoch, _LAYOUT_STREAM])
        slot = np.arange(micro)
        batches = []
        ce_at = ul_at = 0
        for step in range(steps):
            k = self.micro_steps_in(step)
            spread = (
                self.ul_per_micro_batch
                if k == accumulation
                else spread_counts(k * ul_share, k, self.num_replicas)
            )
            # Permuting micro-steps and ranks keeps every row and column sum of the spread.
            counts = spread[rng.permutation(k)][:, rng.permutation(self.num_replicas)]
            is_ul = (slot[None, :] < counts.reshape(-1, 1)).reshape(-1)
            batch = np.empty(len(is_ul), dtype=np.int64)
            n_ul, n_ce = int(is_ul.sum()), int((~is_ul).sum())
            batch[is_ul], batch[~is_ul] = ul[ul_at : ul_at + n_ul], ce[ce_at : ce_at + n_ce]
            ul_at, ce_at = ul_at + n_ul, ce_at + n_ce
            if self.group_by_length:
                batch[:] = batch[np.argsort(-self.lengths[batch], kind="stable")]
            batches.append(batch)
        if all(len(b) == self.sequences_per_step for b in batches):
            return np.stack(batches) if batches else np.empty((0, self.sequences_per_step), np.int64)
        return batches

    def totals(self, batch: np.ndarray) -> StepTotals:
        """Sequences (with scored tokens) and scored tokens per loss type in one step, and the
        share of a full step it is (below 1 only for the partial last step of `official`)."""
        tokens = self.scored_tokens[batch]
        type_ids = self.type_ids[batch]
        n_types = len(self.type_names)
        sequences = np.bincount(type_ids, weights=tokens > 0, minlength=n_types)
        token_sums = np.bincount(type_ids, weights=tokens, minlength=n_types)
        return StepTotals(
            sequences={t: int(n) for t, n in zip(self.type_names, sequences, strict=True)},
            tokens={t: int(n) for t, n in zip(self.type_names, token_sums, strict=True)},
            step_fraction=len(batch) / self.sequences_per_step,
        )

    def micro_batches_with_totals(self) -> Iterator[tuple[list[int], StepTotals]]:
        """This rank's micro-batches of the current epoch, each with its step's totals.
        `start` (set when resuming mid-epoch) skips the micro-batches already trained on."""
        start, self.start = self.start, 0
        micro, world = self.micro_batch_size, self.num_replicas
        position = 0
        for batch in self.global_batches():
            totals = None
            for accumulation in range(len(batch) // (micro * world)):
                if position >= start:
                    if totals is None:
                        totals = self.totals(batch)
                    begin = (accumulation * world + self.rank) * micro
                    yield batch[begin : begin + micro].tolist(), totals
                position += 1

    def __iter__(self) -> Iterator[list[int]]:
        for indices, _ in self.micro_batches_with_totals():
            yield indices

    @property
    def report(self) -> dict[str, Any]:
        """Composition of every step and, per pool, the records used, repeated and left out in
        one epoch (the same figures every epoch)."""
        steps = self.steps_per_epoch
        pools = {}
        for kind, indices, per_step in (
            ("ce", self.ce_indices, self.ce_per_step),
            ("ul", self.ul_indices, self.ul_per_step),
        ):
            n = len(indices)
            draws = (
                self.micro_steps_per_epoch * (per_step // self.accumulate_grad_batches)
                if self.epoch_end == "official"
                else steps * per_step
            )
            pools[kind] = {
                "records": n,
                "per_step": per_step,
                "draws_per_epoch": draws,
                "used_per_epoch": min(n, draws),
                "repeated_per_epoch": max(0, draws - n),
                "left_out_per_epoch": max(0, n - draws),
            }
        return {
            "epoch_end": self.epoch_end,
            "steps_per_epoch": steps,
            "micro_batches_per_rank": len(self),
            "last_step_micro_batches": self.micro_steps_in(steps - 1) if steps else 0,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "world_size": self.num_replicas,
            "micro_batch_size": self.micro_batch_size,
            "sequences_per_step": self.sequences_per_step,
            "ce_per_step": self.ce_per_step,
            "ul_per_step": self.ul_per_step,
            "ul_per_micro_batch": {
                "min": int(self.ul_per_micro_batch.min()),
                "max": int(self.ul_per_micro_batch.max()),
            },
            "group_by_length": self.group_by_length,
            "pools": pools,
        }
