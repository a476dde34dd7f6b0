"""MixedBatchSampler: exactly C CE + U UL sequences per optimiser step, spread evenly over
micro-steps and ranks, the two epoch-end rules, and the step totals each micro-batch carries."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from lightning_fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from reasonft.training.sampler import MixedBatchSampler, accumulation_steps, spread_counts
from reasonft.training.step_totals import (
    CollateWithStepTotals,
    RecordsWithStepTotals,
    StepTotals,
    StepTotalsBatches,
)


def _spread(n_ce: int, n_ul: int) -> list[str]:
    """`n_ce` "ce" and `n_ul` "ul" loss types, interleaved (index order says little about type)."""
    types, ce, ul = [], n_ce, n_ul
    while ce or ul:
        if ul and (not ce or len(types) % 3 == 1):
            types.append("ul")
            ul -= 1
        else:
            types.append("ce")
            ce -= 1
    return types


def per_rank_micro_batches(samplers: list[MixedBatchSampler]) -> list[list[list[int]]]:
    per_rank = [list(s) for s in samplers]
    assert len({len(r) for r in per_rank}) == 1, "ranks yield different numbers of micro-batches"
    return per_rank


def global_steps(samplers: list[MixedBatchSampler]) -> list[list[int]]:
    """Union over ranks of the indices of each optimiser step, read from the ranks' outputs."""
    per_rank = per_rank_micro_batches(samplers)
    accumulate = samplers[0].accumulate_grad_batches
    return [
        [i for rank in per_rank for mb in rank[start : start + accumulate] for i in mb]
        for start in range(0, len(per_rank[0]), accumulate)
    ]


def make(types, world=1, **kwargs) -> list[MixedBatchSampler]:
    return [MixedBatchSampler(types, num_replicas=world, rank=r, **kwargs) for r in range(world)]


def near(values, total: int, parts: int) -> bool:
    """Every value is floor or ceil of total / parts."""
    return set(values) <= {total // parts, -(-total // parts)}


@pytest.mark.parametrize(("world", "micro", "ce", "ul"), [(1, 2, 10, 6), (2, 1, 5, 3), (2, 2, 8, 8), (4, 1, 9, 7)])
def test_every_step_has_exactly_c_ce_and_u_ul_spread_evenly(world, micro, ce, ul):
    types = _spread(n_ce=61, n_ul=40)
    samplers = make(types, world, micro_batch_size=micro, ce_per_step=ce, ul_per_step=ul, seed=5)
    accumulate = samplers[0].accumulate_grad_batches
    assert accumulate == (ce + ul) // (micro * world)
    per_rank = per_rank_micro_batches(samplers)
    steps = global_steps(samplers)
    assert len(steps) == min(61 // ce, 40 // ul)
    for s, step in enumerate(steps):
        assert len(step) == ce + ul
        assert sum(types[i] == "ul" for i in step) == ul
        window = [rank[s * accumulate : (s + 1) * accumulate] for rank in per_rank]
        ul_in = [[sum(types[i] == "ul" for i in mb) for mb in rank] for rank in window]
        cells = [n for rank in ul_in for n in rank]
        assert near(cells, ul, accumulate * world)  # every micro-batch
        assert near([sum(col) for col in zip(*ul_in, strict=True)], ul, accumulate)  # micro-steps
        assert near([sum(rank) for rank in ul_in], ul, world)  # ranks over the step
    for sampler in samplers:
        assert all(len(mb) == micro for mb in sampler)


def test_official_layout_16_ul_per_micro_step_on_32_ranks():
    """128 CE + 128 UL, micro-batch 1 on 32 ranks: accumulation 8, each micro-step 16 UL."""
    counts = spread_counts(128, 8, 32)
    assert counts.max() == 1 and counts.sum() == 128
    assert counts.sum(axis=1).tolist() == [16] * 8 and counts.sum(axis=0).tolist() == [4] * 32


def test_spread_counts_against_exhaustive_balance():
    for total, micro_steps, ranks in itertools.product(range(25), range(1, 7), range(1, 7)):
        counts = spread_counts(total, micro_steps, ranks)
        assert counts.sum() == total
        assert near(counts.reshape(-1).tolist(), total, micro_steps * ranks)
        assert near(counts.sum(axis=1).tolist(), total, micro_steps)
        assert near(counts.sum(axis=0).tolist(), total, ranks)


def test_shortest_rule_uses_each_record_at_most_once_and_reports_left_out():
    types = _spread(n_ce=50, n_ul=23)
    (sampler,) = make(types, micro_batch_size=2, ce_per_step=6, ul_per_step=4, seed=1)
    steps = global_steps([sampler])
    assert len(steps) == min(50 // 6, 23 // 4) == 5
    drawn = Counter(i for step in steps for i in step)
    assert max(drawn.values()) == 1
    pools = sampler.report["pools"]
    assert pools["ce"] == {
        "records": 50, "per_step": 6, "draws_per_epoch": 30, "used_per_epoch": 30,
        "repeated_per_epoch": 0, "left_out_per_epoch": 20,
    }
    assert pools["ul"]["used_per_epoch"] == 20 and pools["ul"]["left_out_per_epoch"] == 3
    assert sampler.report["steps_per_epoch"] == 5 and sampler.report["epoch_end"] == "shortest"
    ul0 = {i for step in steps for i in step if types[i] == "ul"}
    sampler.set_epoch(1)
    ul1 = {i for step in global_steps([sampler]) for i in step if types[i] == "ul"}
    assert len(ul1) == 20 and ul0 != ul1  # the left-out records change with the epoch


def test_ce_rule_sees_every_ce_record_and_cycles_ul():
    types = _spread(n_ce=48, n_ul=3)
    (sampler,) = make(types, micro_batch_size=4, ce_per_step=6, ul_per_step=2, epoch_end="ce")
    steps = global_steps([sampler])
    assert len(steps) == 48 // 6
    ce_draws = Counter(i for step in steps for i in step if types[i] == "ce")
    assert set(ce_draws.values()) == {1} and len(ce_draws) == 48
    ul_draws = Counter(i for step in steps for i in step if types[i] == "ul")
    assert sum(ul_draws.values()) == 16
    # successive full permutations: each UL record drawn floor or ceil of demand / n times
    assert near(ul_draws.values(), 16, 3)
    pools = sampler.report["pools"]
    assert pools["ul"]["repeated_per_epoch"] == 16 - 3 and pools["ul"]["used_per_epoch"] == 3


def test_ce_rule_tops_up_the_last_step_from_a_fresh_pass():
    types = _spread(n_ce=61, n_ul=9)
    (sampler,) = make(types, micro_batch_size=2, ce_per_step=13, ul_per_step=3, epoch_end="ce")
    steps = global_steps([sampler])
    assert len(steps) == math.ceil(61 / 13)
    ce_seen = Counter(i for step in steps for i in step if types[i] == "ce")
    assert set(ce_seen) == {i for i, t in enumerate(types) if t == "ce"}
    assert sum(ce_seen.values()) == len(steps) * 13
    assert sampler.report["pools"]["ce"]["repeated_per_epoch"] == len(steps) * 13 - 61


def test_ce_only_steps_drop_the_last_partial_step():
    types = ["ce"] * 20
    (sampler,) = make(types, micro_batch_size=2, ce_per_step=6, ul_per_step=0)
    steps = global_steps([sampler])
    assert len(steps) == 3 and all(len(s) == 6 for s in steps)
    assert sampler.report["pools"]["ce"]["left_out_per_epoch"] == 2
    assert sampler.report["pools"]["ul"]["records"] == 0
    flat = [i for mb in sampler for i in mb]
    assert flat != sorted(flat)  # shuffled, not in index order


def test_two_ranks_split_one_rank_layout():
    """Rank r's a-th micro-batch is micro-batch a*world + r of the same step."""
    types = _spread(40, 8)
    kwargs = {"micro_batch_size": 2, "ce_per_step": 6, "ul_per_step": 2, "seed": 3}
    batches = MixedBatchSampler(types, num_replicas=2, **kwargs).global_batches(0)
    rank1 = MixedBatchSampler(types, num_replicas=2, rank=1, **kwargs)
    want = [
        batches[s][(a * 2 + 1) * 2 : (a * 2 + 1) * 2 + 2].tolist()
        for s in range(len(batches))
        for a in range(2)
    ]
    assert list(rank1) == want


def test_order_is_a_function_of_seed_and_epoch():
    types = _spread(30, 10)
    kwargs = {"micro_batch_size": 2, "ce_per_step": 6, "ul_per_step": 2}
    a = MixedBatchSampler(types, seed=1, **kwargs)
    b = MixedBatchSampler(types, seed=1, **kwargs)
    epoch0 = list(a)
    assert epoch0 == list(b)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0
    b.set_epoch(1)
    assert list(b) == epoch1  # resuming at epoch 1 reproduces it without replaying epoch 0
    a.set_epoch(0)
    assert list(a) == epoch0
    assert list(MixedBatchSampler(types, seed=2, **kwargs)) != epoch0
    assert a.sampler is a  # Lightning calls batch_sampler.sampler.set_epoch


def test_resume_start_skips_micro_batches_and_keeps_their_totals():
    types = _spread(30, 10)
    (sampler,) = make(types, micro_batch_size=2, ce_per_step=6, ul_per_step=2)
    full = list(sampler.micro_batches_with_totals())
    sampler.start = 5
    assert list(sampler.micro_batches_with_totals()) == full[5:]
    assert list(sampler.micro_batches_with_totals()) == full  # start applies once


def collate_ids(records: list[int]) -> dict[str, list[int]]:
    return {"ids": records}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_lightning_sets_the_epoch_through_the_dataloader(num_workers):
    types = _spread(10, 4)
    kwargs = {"micro_batch_size": 2, "ce_per_step": 3, "ul_per_step": 1}
    sampler = MixedBatchSampler(types, **kwargs)
    loader = DataLoader(
        RecordsWithStepTotals(list(range(len(types)))),
        batch_sampler=StepTotalsBatches(sampler),
        collate_fn=CollateWithStepTotals(collate_ids),
        num_workers=num_workers,  # the totals travel to worker processes and back
    )
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop calls at each epoch start
    assert sampler.epoch == 3
    fresh = MixedBatchSampler(types, **kwargs)
    batches = list(loader)
    assert [b["ids"] for b in batches] == fresh.global_batches(3).reshape(-1, 2).tolist()
    for step in range(len(batches) // 2):
        records = [i for b in batches[2 * step : 2 * step + 2] for i in b["ids"]]
        assert batches[2 * step]["step_totals"].sequences["ul"] == sum(
            types[i] == "ul" for i in records
        ) == 1


def test_every_micro_batch_carries_its_steps_totals():
    """Totals checked against a plain count over the step's records (all ranks)."""
    types = _spread(40, 16)
    scored = [(7 * i) % 11 for i in range(len(types))]  # some records score no token
    samplers = make(
        types, 2, micro_batch_size=2, ce_per_step=6, ul_per_step=2, scored_tokens=scored
    )
    accumulate = samplers[0].accumulate_grad_batches
    per_rank = [list(s.micro_batches_with_totals()) for s in samplers]
    for start in range(0, len(per_rank[0]), accumulate):
        window = [pair for rank in per_rank for pair in rank[start : start + accumulate]]
        records = [i for indices, _ in window for i in indices]
        want = StepTotals(
            sequences={t: sum(types[i] == t and scored[i] > 0 for i in records) for t in ("ce", "ul")},
            tokens={t: sum(scored[i] for i in records if types[i] == t) for t in ("ce", "ul")},
        )
        assert all(totals == want for _, totals in window)


def test_collate_refuses_records_of_different_steps():
    a = StepTotals({"ce": 1}, {"ce": 3})
    b = StepTotals({"ce": 2}, {"ce": 3})
    collate = CollateWithStepTotals(lambda records: {"ids": records})
    assert collate([(0, a), (1, a)]) == {"ids": [0, 1], "step_totals": a}
    with pytest.raises(ValueError, match="different optimiser steps"):
        collate([(0, a), (1, b)])


def test_group_by_length_sorts_within_step_only():
    types = _spread(28, 8)
    lengths = [(i * 37) % 50 + 1 for i in range(len(types))]
    kwargs = {"micro_batch_size": 2, "ce_per_step": 6, "ul_per_step": 2}
    grouped = MixedBatchSampler(types, lengths=lengths, group_by_length=True, **kwargs)
    plain = MixedBatchSampler(types, **kwargs)
    for g, p in zip(grouped.global_batches(0), plain.global_batches(0), strict=True):
        assert sorted(g.tolist()) == sorted(p.tolist())  # same records per step
        got = [lengths[i] for i in g]
        assert got == sorted(got, reverse=True)


def test_accumulation_and_bad_settings_fail_clearly():
    assert accumulation_steps(256, 1, 32) == 8 and accumulation_steps(128, 1, 32) == 4
    with pytest.raises(ValueError, match="multiple of train.micro_batch_size"):
        accumulation_steps(10, 4, 1)
    types = _spread(10, 4)
    with pytest.raises(ValueError, match="multiple of"):
        MixedBatchSampler(types, micro_batch_size=2, ce_per_step=4, ul_per_step=2, num_replicas=2)
    with pytest.raises(ValueError, match=r"train.ul_per_step=5 but only 4 UL records"):
        MixedBatchSampler(types, micro_batch_size=1, ce_per_step=1, ul_per_step=5)
    with pytest.raises(ValueError, match="train.ul_per_step=0 but the training set has 4 UL"):
        MixedBatchSampler(types, micro_batch_size=2, ce_per_step=4)
    with pytest.raises(ValueError, match="train.ul_per_step=2 but the training set has no UL"):
        MixedBatchSampler(["ce"] * 8, micro_batch_size=2, ce_per_step=2, ul_per_step=2)
    with pytest.raises(ValueError, match="train.ce_per_step=0 but the training set has 10 CE"):
        MixedBatchSampler(types, micro_batch_size=2, ce_per_step=0, ul_per_step=2)
    with pytest.raises(ValueError, match="train.epoch_end='longest'"):
        MixedBatchSampler(types, micro_batch_size=2, ce_per_step=2, ul_per_step=2, epoch_end="longest")
    with pytest.raises(ValueError, match="train.epoch_end=ce .* train.ce_per_step=0"):
        MixedBatchSampler(["ul"] * 4, micro_batch_size=2, ce_per_step=0, ul_per_step=2, epoch_end="ce")
    with pytest.raises(ValueError, match="train.ce_per_step=-1"):
        MixedBatchSampler(types, micro_batch_size=1, ce_per_step=-1, ul_per_step=2)
    with pytest.raises(ValueError, match="rank=2"):
        MixedBatchSampler(["ce"] * 4, micro_batch_size=1, ce_per_step=4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="empty"):
        MixedBatchSampler([], micro_batch_size=1, ce_per_step=4)
    assert np.array_equal(spread_counts(0, 2, 2), np.zeros((2, 2)))
