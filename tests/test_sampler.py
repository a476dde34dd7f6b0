"""MixedBatchSampler: exact CE/UL composition per global batch, on one and on several ranks."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from lightning_fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from reasonft.training.sampler import MixedBatchSampler, accumulation_steps


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


def global_steps(samplers: list[MixedBatchSampler]) -> list[list[int]]:
    """Union over ranks of the indices of each optimiser step, read from the ranks' outputs."""
    per_rank = [list(s) for s in samplers]
    assert len({len(r) for r in per_rank}) == 1, "ranks yield different numbers of micro-batches"
    accumulate = samplers[0].accumulate_grad_batches
    steps = []
    for start in range(0, len(per_rank[0]), accumulate):
        steps.append(
            [i for rank in per_rank for mb in rank[start : start + accumulate] for i in mb]
        )
    return steps


@pytest.mark.parametrize("world", [1, 2])
def test_every_global_batch_has_exactly_u_ul(world):
    types = _spread(n_ce=61, n_ul=9)
    samplers = [
        MixedBatchSampler(
            types,
            micro_batch_size=2,
            global_batch_size=16,
            ul_per_global_batch=3,
            num_replicas=world,
            rank=r,
            seed=5,
        )
        for r in range(world)
    ]
    steps = global_steps(samplers)
    assert len(steps) == math.ceil(61 / 13)  # epoch driven by the CE side
    for step in steps:
        assert len(step) == 16
        assert sum(types[i] == "ul" for i in step) == 3
    for sampler in samplers:
        assert all(len(mb) == 2 for mb in sampler)
        assert len(sampler) == len(steps) * sampler.accumulate_grad_batches
    # every CE record is seen in the epoch; the last batch is topped up from a fresh pass
    ce_seen = Counter(i for step in steps for i in step if types[i] == "ce")
    assert set(ce_seen) == {i for i, t in enumerate(types) if t == "ce"}
    assert sum(ce_seen.values()) == len(steps) * 13


def test_two_ranks_split_one_rank_layout():
    """Rank r's a-th micro-batch is micro-batch a*world + r of the same global batch."""
    types = _spread(40, 8)
    kwargs = {"micro_batch_size": 2, "global_batch_size": 8, "ul_per_global_batch": 2, "seed": 3}
    batches = MixedBatchSampler(types, **kwargs).global_batches(0)
    rank1 = MixedBatchSampler(types, num_replicas=2, rank=1, **kwargs)
    got = list(rank1)
    want = [
        batches[s][(a * 2 + 1) * 2 : (a * 2 + 1) * 2 + 2].tolist()
        for s in range(len(batches))
        for a in range(2)
    ]
    assert got == want


def test_order_is_a_function_of_seed_and_epoch():
    types = _spread(30, 6)
    kwargs = {"micro_batch_size": 2, "global_batch_size": 8, "ul_per_global_batch": 2}
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


def test_lightning_sets_the_epoch_through_the_dataloader():
    types = _spread(10, 2)
    sampler = MixedBatchSampler(
        types, micro_batch_size=2, global_batch_size=4, ul_per_global_batch=1
    )
    loader = DataLoader(list(range(len(types))), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop calls at each epoch start
    assert sampler.epoch == 3
    fresh = MixedBatchSampler(types, micro_batch_size=2, global_batch_size=4, ul_per_global_batch=1)
    assert [b.tolist() for b in loader] == fresh.global_batches(3).reshape(-1, 2).tolist()


def test_short_ul_side_cycles_and_reports_it():
    types = _spread(n_ce=48, n_ul=3)
    sampler = MixedBatchSampler(
        types, micro_batch_size=4, global_batch_size=8, ul_per_global_batch=2
    )
    steps = global_steps([sampler])
    n_steps = math.ceil(48 / 6)
    assert len(steps) == n_steps
    ul_draws = Counter(i for step in steps for i in step if types[i] == "ul")
    assert sum(ul_draws.values()) == n_steps * 2
    # successive full permutations: each UL record drawn floor or ceil of demand / n times
    assert set(ul_draws.values()) <= {math.floor(16 / 3), math.ceil(16 / 3)}
    report = sampler.report
    assert report["mode"] == "mixed"
    assert report["cycled"] == {"ce": 0, "ul": math.ceil(16 / 3) - 1}
    assert report["repeated_per_epoch"] == {"ce": 0, "ul": 16 - 3}
    assert report["steps_per_epoch"] == n_steps


def test_long_ul_side_reports_unused_and_uses_others_next_epoch():
    types = _spread(n_ce=12, n_ul=30)
    sampler = MixedBatchSampler(
        types, micro_batch_size=2, global_batch_size=4, ul_per_global_batch=1
    )
    assert sampler.report["unused_per_epoch"]["ul"] == 30 - 12 // 3
    seen0 = {i for s in global_steps([sampler]) for i in s if types[i] == "ul"}
    sampler.set_epoch(1)
    seen1 = {i for s in global_steps([sampler]) for i in s if types[i] == "ul"}
    assert len(seen0) == len(seen1) == 4 and seen0 != seen1


@pytest.mark.parametrize(("n_ce", "n_ul", "u"), [(20, 5, 0), (20, 0, 2), (0, 12, 2)])
def test_plain_shuffle_when_one_kind_is_missing_or_u_is_zero(n_ce, n_ul, u):
    types = _spread(n_ce, n_ul)
    sampler = MixedBatchSampler(
        types, micro_batch_size=2, global_batch_size=4, ul_per_global_batch=u
    )
    steps = global_steps([sampler])
    assert sampler.report["mode"] == "plain"
    assert len(steps) == math.ceil(len(types) / 4)
    drawn = Counter(i for s in steps for i in s)
    assert set(drawn) == set(range(len(types)))
    assert sum(drawn.values()) == len(steps) * 4
    flat = [i for mb in sampler for i in mb]
    assert flat[: len(types)] != list(range(len(types)))  # shuffled, not in index order


def test_group_by_length_sorts_within_global_batch_only():
    types = _spread(28, 4)
    lengths = [(i * 37) % 50 + 1 for i in range(len(types))]
    sampler = MixedBatchSampler(
        types,
        micro_batch_size=2,
        global_batch_size=8,
        ul_per_global_batch=1,
        lengths=lengths,
        group_by_length=True,
    )
    plain = MixedBatchSampler(types, micro_batch_size=2, global_batch_size=8, ul_per_global_batch=1)
    for grouped, mixed in zip(sampler.global_batches(0), plain.global_batches(0), strict=True):
        assert sorted(grouped.tolist()) == sorted(mixed.tolist())  # same records per step
        got = [lengths[i] for i in grouped]
        assert got == sorted(got, reverse=True)


def test_accumulation_and_bad_settings_fail_clearly():
    assert accumulation_steps(128, 1, 32) == 4
    with pytest.raises(ValueError, match="multiple of train.micro_batch_size"):
        accumulation_steps(10, 4, 1)
    types = _spread(10, 2)
    with pytest.raises(ValueError, match="multiple of"):
        MixedBatchSampler(types, micro_batch_size=2, global_batch_size=6, num_replicas=2)
    with pytest.raises(ValueError, match="ul_per_global_batch=9"):
        MixedBatchSampler(types, micro_batch_size=2, global_batch_size=8, ul_per_global_batch=9)
    with pytest.raises(ValueError, match="never be trained"):
        MixedBatchSampler(types, micro_batch_size=2, global_batch_size=4, ul_per_global_batch=4)
    with pytest.raises(ValueError, match="rank=2"):
        MixedBatchSampler(types, micro_batch_size=1, global_batch_size=4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="empty"):
        MixedBatchSampler([], micro_batch_size=1, global_batch_size=4)
