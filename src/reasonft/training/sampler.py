"""Batch sampler that builds every optimiser step from a fixed number of sequences of each record
kind (METHODS §1c): `train.per_step`, one pool per `loss_type`, e.g. `{ce: 128, ul: 128}`.

One optimiser step sees `sum(per_step) = micro_batch_size * world_size * accumulate_grad_batches`
sequences over all ranks and accumulation steps (the official OXA_FULL: 128 CE + 128 UL; SFT,
SFT_LP and OXA_MLE: 128 CE). The pools are taken in sorted order of their names; the first one
(`ce` among ce/ul) fills what the others leave of each micro-batch, and each other pool's
sequences are spread as evenly as possible: every micro-batch holds floor or ceil of its share
per micro-batch, and so does, up to one, every micro-step (all ranks together) and every rank
over the step; which micro-batches get the extra one changes from step to step. With
`group_by_length` the step's sequences are instead sorted by length before they are cut into
micro-batches (less padding; a micro-batch's composition then follows the lengths — the step's
totals and its objective do not change).
Micro-batch `a * world_size + rank` of a step is rank `rank`'s `a`-th accumulation step.

Epoch end (`epoch_end`):
- `shortest`: a fresh permutation of each pool per epoch, cut into steps until some pool
  cannot fill another step (drop_last); the records left over wait for a later epoch's shuffle.
  The official rule counted in whole steps (`official` below is the official sampler exactly).
- a pool's name (`ce`): that pool sets the epoch, `ceil(n / share)` steps, each of its records
  once (the last step is topped up from a fresh permutation); every other pool is a stream of
  permutations, restarted with a new shuffle when it runs out.
- `official`: the official sampler's epoch, which counts micro-steps (all ranks' micro-batches
  at one accumulation step: share / A sequences of each pool, A the accumulation): each pool's
  permutation is cut into micro-steps until some pool cannot fill another (so `n mod (C / A)`
  CE records are left out, not `n mod C`), and the micro-steps are grouped into optimiser steps
  of A; the last step of the epoch takes the micro-steps left over (fewer than A). Its terms are
  still divided by the full step's counts, as the official loss divides every micro-batch by
  the full accumulation: a partial step of k micro-steps weighs k / A of a full one
  (`StepTotals.step_fraction`). At 50,000 + 50,000 records and 128 + 128 per step that is 391
  steps and 50,000 records per epoch, against 390 and 49,920 under `shortest`.
`report` states, per pool and epoch, how many records were used, repeated and left out.

The order is a pure function of `(seed, epoch)`: `set_epoch(e)` (which Lightning calls at the
start of each epoch) followed by iteration reproduces epoch e exactly, e.g. after resuming.
Pool i of n draws from random stream i and the layout from stream n, which keeps the CE/UL
sequences of the two-pool sampler this one generalises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from reasonft.training.step_totals import StepTotals

# Epoch-end rules that are not a pool's name.
EPOCH_END_RULES = ("shortest", "official")
PER_STEP_KEY = "train.per_step"


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
            f"the sum of {PER_STEP_KEY} = {sequences_per_step!r} must be a positive integer"
        )
    if sequences_per_step % per_micro_step:
        raise ValueError(
            f"the sum of {PER_STEP_KEY} = {sequences_per_step} must be a multiple of "
            f"train.micro_batch_size * world_size = {micro_batch_size} * {world_size} = "
            f"{per_micro_step} (world_size = trainer.devices * trainer.num_nodes)"
        )
    return sequences_per_step // per_micro_step


def check_per_step(per_step: Mapping[str, Any]) -> dict[str, int]:
    """`train.per_step` as `{loss_type: non-negative int}` in the sampler's (sorted) pool order."""
    if not per_step:
        raise ValueError(f"{PER_STEP_KEY} is empty; give each record kind its share, e.g. {{ce: 8}}")
    checked = {}
    for kind in sorted(per_step):
        value = per_step[kind]
        if not isinstance(kind, str) or not kind or kind in EPOCH_END_RULES:
            raise ValueError(
                f"{PER_STEP_KEY}: {kind!r} cannot name a record kind (not empty, not one of "
                f"{EPOCH_END_RULES})"
            )
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{PER_STEP_KEY}.{kind}={value!r} must be a non-negative integer")
        checked[kind] = int(value)
    return checked


def spread_counts(total: int, micro_steps: int, ranks: int) -> np.ndarray:
    """`[micro_steps, ranks]` counts summing to `total`: each cell floor or ceil of the mean, each
    row and each column too (the extras go down wrapped diagonals, shifted by one per wrap)."""
    cells = micro_steps * ranks
    counts = np.full((micro_steps, ranks), total // cells, dtype=np.int64)
    period = math.lcm(micro_steps, ranks)
    for k in range(total % cells):
        counts[k % micro_steps, (k + k // period) % ranks] += 1
    return counts


def cumulative_spread(shares: Sequence[int], micro_steps: int, ranks: int) -> np.ndarray:
    """`[len(shares), micro_steps, ranks]`: row j spreads `sum(shares[:j + 1])`. A pool's cells
    are the difference of two rows, a run of consecutive extras, so floor or ceil of its mean."""
    totals = np.cumsum(shares, dtype=np.int64)
    if not len(totals):
        return np.zeros((0, micro_steps, ranks), dtype=np.int64)
    return np.stack([spread_counts(int(t), micro_steps, ranks) for t in totals])


class MixedBatchSampler(Sampler[dict[str, Any]]):
    """Yields this rank's micro-batches: `{"indices": [record index, ...], "step_totals": {...}}`,
    `per_step[kind]` sequences of each kind per optimiser step."""

    def __init__(
        self,
        loss_types: Sequence[str],
        micro_batch_size: int,
        per_step: Mapping[str, int],
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch_end: str = "shortest",
        scored_tokens: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
        group_by_length: bool = False,
    ) -> None:
        self.per_step = check_per_step(per_step)
        self.pool_names = tuple(self.per_step)
        self.sequences_per_step = sum(self.per_step.values())
        self.accumulate_grad_batches = accumulation_steps(
            self.sequences_per_step, micro_batch_size, num_replicas
        )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"sampler: rank={rank} must be in [0, num_replicas={num_replicas})")
        if epoch_end not in EPOCH_END_RULES and epoch_end not in self.per_step:
            raise ValueError(
                f"train.epoch_end={epoch_end!r}; choose one of {EPOCH_END_RULES} or a pool of "
                f"{PER_STEP_KEY} ({list(self.pool_names)})"
            )
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
        self.group_by_length = group_by_length
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.start = 0
        self.epoch = 0

        types = np.asarray(list(loss_types), dtype=object)
        unknown = sorted(set(types.tolist()) - set(self.pool_names))
        if unknown:
            raise ValueError(
                f"sampler: records of loss_type {unknown} but {PER_STEP_KEY} has no share for "
                f"them ({dict(self.per_step)})"
            )
        self.pool_ids = np.asarray([self.pool_names.index(t) for t in types.tolist()])
        self.pools = [np.flatnonzero(self.pool_ids == i) for i in range(len(self.pool_names))]
        self.scored_tokens = (
            np.ones(len(types), dtype=np.int64)
            if scored_tokens is None
            else np.asarray(scored_tokens, dtype=np.int64)
        )
        self._check_pools()
        if epoch_end == "official":
            for kind, value in self.per_step.items():
                if value % self.accumulate_grad_batches:
                    raise ValueError(
                        f"train.epoch_end=official counts micro-steps of share / A sequences of "
                        f"each pool, but {PER_STEP_KEY}.{kind}={value} is not a multiple of the "
                        f"accumulation A = {self.accumulate_grad_batches}"
                    )
        self.micro_steps_per_epoch = self._micro_steps_per_epoch()
        self.steps_per_epoch = -(-self.micro_steps_per_epoch // self.accumulate_grad_batches)
        # Every pool but the first, cumulated: the first fills the rest of each micro-batch.
        self.spread = cumulative_spread(
            list(self.per_step.values())[1:], self.accumulate_grad_batches, num_replicas
        )

    def _check_pools(self) -> None:
        """Every pool has a positive share of each step, and every positive share has records."""
        for kind, indices in zip(self.pool_names, self.pools, strict=True):
            key, per_step, n = f"{PER_STEP_KEY}.{kind}", self.per_step[kind], len(indices)
            if per_step > 0 and n == 0:
                raise ValueError(
                    f"{key}={per_step} but the training set has no `{kind}` records; set "
                    f"{key}=0 (and give the other pools the whole step)"
                )
            if per_step == 0 and n > 0:
                raise ValueError(
                    f"{key}=0 but the training set has {n} `{kind}` records the loss trains "
                    f"on, which would never be seen; give them a share of every step ({key}) or "
                    "pick a loss without that term (e.g. loss=sft drops UL records)"
                )

    def _active(self) -> list[tuple[str, int, int]]:
        """(kind, records, share per step) of the pools with a positive share."""
        return [
            (kind, len(indices), self.per_step[kind])
            for kind, indices in zip(self.pool_names, self.pools, strict=True)
            if self.per_step[kind] > 0
        ]

    def _micro_steps_per_epoch(self) -> int:
        """Micro-steps (one micro-batch on every rank) per epoch."""
        accumulation = self.accumulate_grad_batches
        if self.epoch_end != "official":
            return self._steps_per_epoch() * accumulation
        pools = [(kind, n, share // accumulation) for kind, n, share in self._active()]
        micro_steps = min(n // share for _, n, share in pools)
        if micro_steps == 0:
            kind, n, share = min(pools, key=lambda pool: pool[1] // pool[2])
            raise ValueError(
                f"{PER_STEP_KEY}.{kind}: only {n} `{kind}` records, not one micro-step of "
                f"{share} under train.epoch_end=official; lower {PER_STEP_KEY}.{kind}"
            )
        return micro_steps

    def micro_steps_in(self, step: int) -> int:
        """Micro-steps of optimiser step `step` of an epoch (fewer than A only in the last step
        of an `official` epoch)."""
        done = step * self.accumulate_grad_batches
        return min(self.accumulate_grad_batches, self.micro_steps_per_epoch - done)

    def _steps_per_epoch(self) -> int:
        pools = self._active()
        if self.epoch_end in self.per_step:
            kind = self.epoch_end
            if self.per_step[kind] == 0:
                raise ValueError(
                    f"train.epoch_end={kind} lets the `{kind}` pool set the epoch, but "
                    f"{PER_STEP_KEY}.{kind}=0; use train.epoch_end=shortest"
                )
            return math.ceil(len(self.pools[self.pool_names.index(kind)]) / self.per_step[kind])
        steps = min(n // per_step for _, n, per_step in pools)
        if steps == 0:
            kind, n, per_step = min(pools, key=lambda pool: pool[1] // pool[2])
            first = self.pool_names[0]
            raise ValueError(
                f"{PER_STEP_KEY}.{kind}={per_step} but only {n} `{kind}` records: not one "
                f"full step under train.epoch_end=shortest; lower {PER_STEP_KEY}.{kind}"
                + (
                    f" or set train.epoch_end={first} (`{kind}` records then repeat)"
                    if kind != first and self.per_step[first] > 0
                    else ""
                )
            )
        return steps

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls it (on the DataLoader's sampler) at every epoch start."""
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

    def _demand(self, kind: str) -> int:
        """Draws from a pool in one epoch."""
        if self.epoch_end == "official":
            return self.micro_steps_per_epoch * (self.per_step[kind] // self.accumulate_grad_batches)
        return self.steps_per_epoch * self.per_step[kind]

    def global_batches(self, epoch: int | None = None) -> np.ndarray | list[np.ndarray]:
        """All ranks' record indices for each optimiser step, laid out as `[steps, sum(per_step)]`:
        position `j * micro_batch_size + i` is item i of micro-batch j. (A list of rows when the
        last step of an `official` epoch is partial: that row is shorter.)"""
        epoch = self.epoch if epoch is None else epoch
        steps, micro, accumulation = self.steps_per_epoch, self.micro_batch_size, self.accumulate_grad_batches
        n_pools = len(self.pool_names)
        draws = [
            self._draws(indices, self._demand(kind), stream, epoch)
            for stream, (kind, indices) in enumerate(zip(self.pool_names, self.pools, strict=True))
        ]
        rng = np.random.default_rng([self.seed, epoch, n_pools])  # the layout's stream
        shares = [self.per_step[kind] // accumulation for kind in self.pool_names[1:]]
        slot = np.arange(micro)
        batches = []
        taken = [0] * n_pools
        for step in range(steps):
            k = self.micro_steps_in(step)
            spread = (
                self.spread
                if k == accumulation
                else cumulative_spread([k * share for share in shares], k, self.num_replicas)
            )
            # Permuting micro-steps and ranks keeps every row and column sum of the spread.
            spread = spread[:, rng.permutation(k)][:, :, rng.permutation(self.num_replicas)]
            # Slot i of a micro-batch belongs to pool 1 + (the cumulative counts it reaches),
            # and to pool 0 past the last of them.
            cells = spread.reshape(n_pools - 1, k * self.num_replicas, 1)
            level = (slot[None, None, :] >= cells).sum(axis=0)
            pool_of = np.where(level < n_pools - 1, level + 1, 0).reshape(-1)
            batch = np.empty(len(pool_of), dtype=np.int64)
            for pool in range(n_pools):
                where = pool_of == pool
                n = int(where.sum())
                batch[where] = draws[pool][taken[pool] : taken[pool] + n]
                taken[pool] += n
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
        pool_ids = self.pool_ids[batch]
        n_pools = len(self.pool_names)
        sequences = np.bincount(pool_ids, weights=tokens > 0, minlength=n_pools)
        token_sums = np.bincount(pool_ids, weights=tokens, minlength=n_pools)
        return StepTotals(
            sequences={t: int(n) for t, n in zip(self.pool_names, sequences, strict=True)},
            tokens={t: int(n) for t, n in zip(self.pool_names, token_sums, strict=True)},
            step_fraction=len(batch) / self.sequences_per_step,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches of the current epoch, each with its step's totals (plain
        data). `start` (set when resuming mid-epoch) skips the micro-batches already trained on."""
        start, self.start = self.start, 0
        micro, world = self.micro_batch_size, self.num_replicas
        position = 0
        for batch in self.global_batches():
            totals = None
            for accumulation in range(len(batch) // (micro * world)):
                if position >= start:
                    if totals is None:
                        totals = self.totals(batch).as_dict()
                    begin = (accumulation * world + self.rank) * micro
                    yield {"indices": batch[begin : begin + micro].tolist(), "step_totals": totals}
                position += 1

    @property
    def report(self) -> dict[str, Any]:
        """Composition of every step and, per pool, the records used, repeated and left out in
        one epoch (the same figures every epoch)."""
        steps = self.steps_per_epoch
        pools = {}
        for kind, indices in zip(self.pool_names, self.pools, strict=True):
            n, draws = len(indices), self._demand(kind)
            pools[kind] = {
                "records": n,
                "per_step": self.per_step[kind],
                "draws_per_epoch": draws,
                "used_per_epoch": min(n, draws),
                "repeated_per_epoch": max(0, draws - n),
                "left_out_per_epoch": max(0, n - draws),
            }
        cumulative = np.concatenate([np.zeros((1, *self.spread.shape[1:]), np.int64), self.spread])
        per_micro_batch = {
            kind: np.diff(cumulative, axis=0)[j - 1] if j else self.micro_batch_size - cumulative[-1]
            for j, kind in enumerate(self.pool_names)
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
            "per_step": dict(self.per_step),
            "per_micro_batch": {
                kind: {"min": int(counts.min()), "max": int(counts.max())}
                for kind, counts in per_micro_batch.items()
            },
            "group_by_length": self.group_by_length,
            "pools": pools,
        }
