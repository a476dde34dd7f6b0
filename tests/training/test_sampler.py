"""MixedBatchSampler: exactly `per_step[kind]` sequences of each kind per optimiser step (C CE +
U UL, or more pools), spread evenly over micro-steps and ranks, the epoch-end rules, the step
totals each micro-batch carries, and the CE/UL sequences of the two-pool sampler it replaced."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from lightning_fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from reasonft.training.datamodule import MicroBatches
from reasonft.training.sampler import MixedBatchSampler, accumulation_steps, spread_counts
from reasonft.training.step_totals import StepTotals


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


def indices(sampler: MixedBatchSampler) -> list[list[int]]:
    """The record indices of each micro-batch the sampler yields."""
    return [micro_batch["indices"] for micro_batch in sampler]


def per_rank_micro_batches(samplers: list[MixedBatchSampler]) -> list[list[list[int]]]:
    per_rank = [indices(s) for s in samplers]
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
    samplers = make(types, world, micro_batch_size=micro, per_step={"ce": ce, "ul": ul}, seed=5)
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
        assert all(len(mb) == micro for mb in indices(sampler))


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
    (sampler,) = make(types, micro_batch_size=2, per_step={"ce": 6, "ul": 4}, seed=1)
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
    (sampler,) = make(types, micro_batch_size=4, per_step={"ce": 6, "ul": 2}, epoch_end="ce")
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
    (sampler,) = make(types, micro_batch_size=2, per_step={"ce": 13, "ul": 3}, epoch_end="ce")
    steps = global_steps([sampler])
    assert len(steps) == math.ceil(61 / 13)
    ce_seen = Counter(i for step in steps for i in step if types[i] == "ce")
    assert set(ce_seen) == {i for i, t in enumerate(types) if t == "ce"}
    assert sum(ce_seen.values()) == len(steps) * 13
    assert sampler.report["pools"]["ce"]["repeated_per_epoch"] == len(steps) * 13 - 61


def test_ce_only_steps_drop_the_last_partial_step():
    types = ["ce"] * 20
    (sampler,) = make(types, micro_batch_size=2, per_step={"ce": 6})
    steps = global_steps([sampler])
    assert len(steps) == 3 and all(len(s) == 6 for s in steps)
    assert sampler.report["pools"]["ce"]["left_out_per_epoch"] == 2
    assert list(sampler.report["pools"]) == ["ce"]
    flat = [i for mb in indices(sampler) for i in mb]
    assert flat != sorted(flat)  # shuffled, not in index order


def test_two_ranks_split_one_rank_layout():
    """Rank r's a-th micro-batch is micro-batch a*world + r of the same step."""
    types = _spread(40, 8)
    kwargs = {"micro_batch_size": 2, "per_step": {"ce": 6, "ul": 2}, "seed": 3}
    batches = MixedBatchSampler(types, num_replicas=2, **kwargs).global_batches(0)
    rank1 = MixedBatchSampler(types, num_replicas=2, rank=1, **kwargs)
    want = [
        batches[s][(a * 2 + 1) * 2 : (a * 2 + 1) * 2 + 2].tolist()
        for s in range(len(batches))
        for a in range(2)
    ]
    assert indices(rank1) == want


def test_order_is_a_function_of_seed_and_epoch():
    types = _spread(30, 10)
    kwargs = {"micro_batch_size": 2, "per_step": {"ce": 6, "ul": 2}}
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
    assert indices(MixedBatchSampler(types, seed=2, **kwargs)) != indices(a)


def test_resume_start_skips_micro_batches_and_keeps_their_totals():
    types = _spread(30, 10)
    (sampler,) = make(types, micro_batch_size=2, per_step={"ce": 6, "ul": 2})
    full = list(sampler)
    sampler.start = 5
    assert list(sampler) == full[5:]
    assert list(sampler) == full  # start applies once


def collate_ids(records: list[int]) -> dict[str, list[int]]:
    return {"ids": records}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_lightning_sets_the_epoch_through_the_dataloader(num_workers):
    types = _spread(10, 4)
    kwargs = {"micro_batch_size": 2, "per_step": {"ce": 3, "ul": 1}}
    sampler = MixedBatchSampler(types, **kwargs)
    loader = DataLoader(
        MicroBatches(list(range(len(types))), collate_ids),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,  # the totals travel to worker processes and back
    )
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop calls at each epoch start
    assert sampler.epoch == 3
    fresh = MixedBatchSampler(types, **kwargs)
    batches = list(loader)
    assert [b["ids"] for b in batches] == fresh.global_batches(3).reshape(-1, 2).tolist()
    for step in range(len(batches) // 2):
        records = [i for b in batches[2 * step : 2 * step + 2] for i in b["ids"]]
        assert batches[2 * step]["step_totals"]["sequences"]["ul"] == sum(
            types[i] == "ul" for i in records
        ) == 1


def test_every_micro_batch_carries_its_steps_totals():
    """Totals checked against a plain count over the step's records (all ranks)."""
    types = _spread(40, 16)
    scored = [(7 * i) % 11 for i in range(len(types))]  # some records score no token
    samplers = make(
        types, 2, micro_batch_size=2, per_step={"ce": 6, "ul": 2}, scored_tokens=scored
    )
    accumulate = samplers[0].accumulate_grad_batches
    per_rank = [list(s) for s in samplers]
    for start in range(0, len(per_rank[0]), accumulate):
        window = [mb for rank in per_rank for mb in rank[start : start + accumulate]]
        records = [i for mb in window for i in mb["indices"]]
        want = StepTotals(
            sequences={t: sum(types[i] == t and scored[i] > 0 for i in records) for t in ("ce", "ul")},
            tokens={t: sum(scored[i] for i in records if types[i] == t) for t in ("ce", "ul")},
        )
        assert all(StepTotals.from_dict(mb["step_totals"]) == want for mb in window)


def test_group_by_length_sorts_within_step_only():
    types = _spread(28, 8)
    lengths = [(i * 37) % 50 + 1 for i in range(len(types))]
    kwargs = {"micro_batch_size": 2, "per_step": {"ce": 6, "ul": 2}}
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
        MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 4, "ul": 2}, num_replicas=2)
    with pytest.raises(ValueError, match=r"train.per_step.ul=5 but only 4 `ul` records"):
        MixedBatchSampler(types, micro_batch_size=1, per_step={"ce": 1, "ul": 5})
    with pytest.raises(ValueError, match="train.per_step.ul=0 but the training set has 4 `ul`"):
        MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 4, "ul": 0})
    with pytest.raises(ValueError, match=r"records of loss_type \['ul'\] but train.per_step has no"):
        MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 4})
    with pytest.raises(ValueError, match="train.per_step.ul=2 but the training set has no `ul`"):
        MixedBatchSampler(["ce"] * 8, micro_batch_size=2, per_step={"ce": 2, "ul": 2})
    with pytest.raises(ValueError, match="train.per_step.ce=0 but the training set has 10 `ce`"):
        MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 0, "ul": 2})
    with pytest.raises(ValueError, match="train.epoch_end='longest'"):
        MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 2, "ul": 2}, epoch_end="longest")
    with pytest.raises(ValueError, match="train.epoch_end=ce .* train.per_step.ce=0"):
        MixedBatchSampler(["ul"] * 4, micro_batch_size=2, per_step={"ce": 0, "ul": 2}, epoch_end="ce")
    with pytest.raises(ValueError, match="train.per_step.ce=-1"):
        MixedBatchSampler(types, micro_batch_size=1, per_step={"ce": -1, "ul": 2})
    with pytest.raises(ValueError, match="rank=2"):
        MixedBatchSampler(["ce"] * 4, micro_batch_size=1, per_step={"ce": 4}, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="empty"):
        MixedBatchSampler([], micro_batch_size=1, per_step={"ce": 4})
    with pytest.raises(ValueError, match="train.per_step is empty"):
        MixedBatchSampler(types, micro_batch_size=1, per_step={})
    with pytest.raises(ValueError, match="'official' cannot name a record kind"):
        MixedBatchSampler(types, micro_batch_size=1, per_step={"ce": 1, "official": 1})
    assert np.array_equal(spread_counts(0, 2, 2), np.zeros((2, 2)))


# The two-pool sampler on main (42cf14e) yielded exactly these micro-batches, per (rank, epoch),
# for these settings (computed there once; the N-pool sampler must keep them).
TWO_POOL_SEQUENCES = [
    (
        {"types": _spread(13, 7), "micro_batch_size": 2, "per_step": {"ce": 6, "ul": 2},
         "num_replicas": 2, "seed": 3},
        {
        (0, 0): [[13, 14], [17, 0], [6, 11], [19, 15]],
        (0, 1): [[16, 11], [18, 14], [10, 2], [15, 12]],
        (1, 0): [[18, 3], [10, 2], [4, 9], [8, 5]],
        (1, 1): [[6, 0], [13, 17], [3, 8], [1, 9]],
        },
    ),
    (
        {"types": _spread(11, 4), "micro_batch_size": 2, "per_step": {"ce": 5, "ul": 3},
         "epoch_end": "ce", "seed": 1},
        {
        (0, 0): [[7, 11], [14, 8], [1, 6], [4, 0], [10, 2], [7, 12], [3, 13], [4, 9], [1, 5], [10, 2], [7, 14], [9, 0]],
        (0, 1): [[4, 11], [10, 3], [7, 6], [9, 2], [1, 0], [4, 5], [1, 8], [13, 12], [7, 14], [10, 12], [4, 11], [0, 9]],
        },
    ),
    (
        {"types": _spread(14, 9), "micro_batch_size": 2, "per_step": {"ce": 4, "ul": 4},
         "num_replicas": 2, "epoch_end": "official", "seed": 2},
        {
        (0, 0): [[10, 3], [16, 0], [4, 17], [13, 15]],
        (0, 1): [[1, 0], [19, 9], [21, 2], [10, 5]],
        (1, 0): [[1, 18], [7, 9], [19, 11], [22, 20]],
        (1, 1): [[4, 17], [13, 12], [22, 3], [7, 15]],
        },
    ),
    (
        {"types": ["ce"] * 9, "micro_batch_size": 2, "per_step": {"ce": 4}, "seed": 5},
        {
        (0, 0): [[1, 4], [2, 3], [0, 7], [5, 6]],
        (0, 1): [[5, 6], [2, 4], [0, 8], [7, 3]],
        },
    ),
    (
        {"types": _spread(10, 6), "micro_batch_size": 3, "per_step": {"ce": 4, "ul": 2}, "seed": 4,
         "group_by_length": True, "lengths": [(i * 7) % 11 + 1 for i in range(16)]},
        {
        (0, 0): [[3, 4, 7], [2, 0, 11], [14, 6, 9], [12, 15, 13]],
        (0, 1): [[14, 6, 4], [7, 8, 11], [3, 9, 10], [13, 2, 0]],
        },
    ),
]


@pytest.mark.parametrize(("settings", "expected"), TWO_POOL_SEQUENCES)
def test_ce_ul_sequences_are_the_two_pool_samplers(settings, expected):
    settings = dict(settings)
    types = settings.pop("types")
    world = settings.get("num_replicas", 1)
    assert len(expected) == 2 * world
    for rank in range(world):
        sampler = MixedBatchSampler(types, rank=rank, **settings)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            assert indices(sampler) == expected[rank, epoch]
    if "ul" not in settings["per_step"]:  # an empty pool with no share changes nothing
        with_ul = MixedBatchSampler(types, **{**settings, "per_step": {**settings["per_step"], "ul": 0}})
        assert indices(with_ul) == expected[0, 0]


def test_three_pools_fill_every_step_and_a_named_pool_sets_the_epoch():
    """A third kind (`cw`) gets its own pool: every step holds each pool's share, each
    micro-batch floor or ceil of each non-first pool's mean, and epoch_end=cw lets it set the
    epoch while ce and ul cycle."""
    types = [("ce", "cw", "ul", "ce", "cw")[i % 5] for i in range(50)]
    per_step = {"ul": 3, "ce": 5, "cw": 4}  # sorted into pools ce, cw, ul
    samplers = make(types, 2, micro_batch_size=3, per_step=per_step, epoch_end="cw", seed=9)
    assert samplers[0].pool_names == ("ce", "cw", "ul")
    steps = global_steps(samplers)
    assert len(steps) == math.ceil(20 / 4)
    assert Counter(i for step in steps for i in step if types[i] == "cw") == Counter(
        i for i, t in enumerate(types) if t == "cw"
    )  # each cw record once
    per_rank = per_rank_micro_batches(samplers)
    for step in steps:
        assert Counter(types[i] for i in step) == per_step
    for rank in per_rank:
        for micro_batch in rank:
            assert near([sum(types[i] == "cw" for i in micro_batch)], 4, 4)
            assert near([sum(types[i] == "ul" for i in micro_batch)], 3, 4)
    report = samplers[0].report
    assert report["per_step"] == {"ce": 5, "cw": 4, "ul": 3}
    assert report["pools"]["cw"]["repeated_per_epoch"] == 0
    assert report["pools"]["ul"]["draws_per_epoch"] == 15
    totals = [StepTotals.from_dict(mb["step_totals"]) for mb in samplers[0]]
    assert all(t.sequences == per_step for t in totals)
