"""Gaussian PPL quotas and the ppl_gaussian selector (METHODS.md §1a) against plain references."""

from __future__ import annotations

import math
import random
from collections import Counter
from decimal import ROUND_FLOOR, Decimal

import datasets
import numpy as np
import pytest

from reasonft.selection.gaussian import PPLGaussianSelector, assign_bins, gaussian_quotas

OFFICIAL = {
    "n": 50_000,
    "mu": 2.5,
    "sigma": 0.25,
    "ppl_min": 1.0,
    "ppl_max": 5.0,
    "bin_width": 0.05,
}


def reference_quotas(n, mu, sigma, ppl_min, ppl_max, bin_width):
    """Direct loop: pdf at each bin centre, floor, largest remainder (ties: lower bin first)."""
    n_bins = round((ppl_max - ppl_min) / bin_width)
    pdf = []
    for i in range(n_bins):
        centre = ppl_min + (i + 0.5) * bin_width
        z = (centre - mu) / sigma
        pdf.append(math.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi)))
    total = sum(pdf)
    exact = [n * p / total for p in pdf]
    quotas = [math.floor(e) for e in exact]
    remainder = n - sum(quotas)
    by_fraction = sorted(range(n_bins), key=lambda i: (-round(exact[i] - quotas[i], 9), i))
    for i in by_fraction[:remainder]:
        quotas[i] += 1
    return quotas


def decimal_bin(ppl, ppl_min, bin_width, n_bins):
    """Bin index in exact decimal arithmetic on the values as written (last bin closed)."""
    steps = (Decimal(repr(ppl)) - Decimal(repr(ppl_min))) / Decimal(repr(bin_width))
    return min(int(steps.to_integral_value(rounding=ROUND_FLOOR)), n_bins - 1)


def test_official_quotas():
    edges, quotas = gaussian_quotas(**OFFICIAL)
    assert len(edges) == 81 and len(quotas) == 80
    assert edges[0] == 1.0 and edges[-1] == 5.0
    assert np.allclose(np.diff(edges), 0.05)
    assert int(quotas.sum()) == 50_000
    assert quotas.tolist() == reference_quotas(**OFFICIAL)
    # mu = 2.5 is the edge between bins 29 and 30: mirrored bins get (almost) the same quota.
    for k in range(30):
        assert abs(int(quotas[29 - k]) - int(quotas[30 + k])) <= 1
    assert quotas[29] == quotas.max()


def combos():
    rng = np.random.default_rng(7)
    ranges = [
        (1.0, 5.0, 0.05),
        (1.0, 5.0, 0.1),
        (0.3, 0.9, 0.1),
        (1.0, 3.0, 0.25),
        (2.0, 2.7, 0.07),
    ]
    out = []
    for n in (0, 1, 7, 999, 50_000, 123_457):
        for lo, hi, w in ranges:
            mu = float(rng.uniform(lo - 0.5, hi + 0.5))
            sigma = float(rng.uniform(0.05, 2.0))
            out.append((n, mu, sigma, lo, hi, w))
    return out


@pytest.mark.parametrize("n,mu,sigma,lo,hi,w", combos())
def test_quotas_sum_and_match_reference(n, mu, sigma, lo, hi, w):
    edges, quotas = gaussian_quotas(n, mu, sigma, lo, hi, w)
    assert int(quotas.sum()) == n
    assert quotas.tolist() == reference_quotas(n, mu, sigma, lo, hi, w)
    assert len(edges) == len(quotas) + 1 and edges[-1] == hi
    assert (quotas >= 0).all()


def test_tied_fractions_go_to_the_lower_bin():
    # Two bins mirrored around mu: equal pdf, N odd -> the extra unit goes to bin 0.
    _, quotas = gaussian_quotas(3, 1.1, 1.0, 1.0, 1.2, 0.1)
    assert quotas.tolist() == [2, 1]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(OFFICIAL, bin_width=0.03), "whole number of bins"),
        (dict(OFFICIAL, sigma=0.0), "sigma"),
        (dict(OFFICIAL, ppl_min=5.0, ppl_max=1.0), "ppl_min < ppl_max"),
        (dict(OFFICIAL, mu=1000.0, sigma=0.01), "no mass"),
        (dict(OFFICIAL, n=-1), "non-negative"),
    ],
)
def test_quota_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_quotas(**kwargs)


# ---- the selector ---------------------------------------------------------------------------


def pool(rows):
    """A Dataset from row dicts with the columns the selector reads, plus a `row` id."""
    base = {"source": "teacher", "correct": True, "n_tokens": 100}
    return datasets.Dataset.from_list([{**base, **r, "row": i} for i, r in enumerate(rows)])


def two_bins(**overrides):
    """Two bins [1.0, 1.1) and [1.1, 1.2] with equal weight."""
    kw = {"mu": 1.1, "sigma": 1.0, "ppl_min": 1.0, "ppl_max": 1.2, "bin_width": 0.1, "seed": 0}
    kw.update(overrides)
    return PPLGaussianSelector(**kw)


HAND_POOL = [
    {"prompt_id": "P1", "ppl": 1.05, "n_tokens": 100},
    {"prompt_id": "P2", "ppl": 1.05, "n_tokens": 90},
    {"prompt_id": "P3", "ppl": 1.05, "n_tokens": 80},
    {"prompt_id": "P1", "ppl": 1.15, "n_tokens": 200},
    {"prompt_id": "P2", "ppl": 1.15, "n_tokens": 150},
    {"prompt_id": "P4", "ppl": 1.15, "n_tokens": 10},
]


def test_round_scheme_cap_one_by_hand():
    sel = two_bins(n=4, max_per_prompt=1)(pool(HAND_POOL))
    # Bin 0 (lower PPL) goes first: its two longest, P1 and P2. Bin 1 then cannot use P1/P2.
    assert sorted(sel.records["row"]) == [0, 1, 5]
    assert sel.report["shortfall"] == 1
    assert sel.report["shortfall_per_prompt_cap"] == 1
    assert sel.report["shortfall_too_few_candidates"] == 0
    assert [b["shortfall"] for b in sel.report["bins"]] == [0, 1]


def test_round_scheme_cap_two_by_hand():
    sel = two_bins(n=4, max_per_prompt=2)(pool(HAND_POOL))
    # Bin 0 takes P1 and P2 (rows 0, 1). Bin 1 then runs its own round 1: P1 and P2 have one
    # response each overall (< 2) and none in this bin, so its two longest, rows 3 and 4, go in;
    # P4 (row 5, 10 tokens) is not needed. (Rounds over all bins at once would take row 5 instead.)
    assert sorted(sel.records["row"]) == [0, 1, 3, 4]
    assert sel.report["shortfall"] == 0 and sel.report["rounds_used"] == 1


def test_bin_finishes_its_rounds_before_the_next_bin():
    rows = [
        {"prompt_id": "P1", "ppl": 1.01, "n_tokens": 100},
        {"prompt_id": "P1", "ppl": 1.02, "n_tokens": 90},
        {"prompt_id": "P2", "ppl": 1.03, "n_tokens": 80},
        {"prompt_id": "P1", "ppl": 1.11, "n_tokens": 300},
        {"prompt_id": "P3", "ppl": 1.12, "n_tokens": 200},
        {"prompt_id": "P4", "ppl": 1.13, "n_tokens": 100},
    ]
    sel = two_bins(n=6, max_per_prompt=2)(pool(rows))
    # Bin 0 (quota 3): round 1 takes P1 (row 0) and P2 (row 2), round 2 P1's second (row 1).
    # P1 is now at the cap of 2, so bin 1 skips its longest (row 3) and takes rows 4 and 5.
    assert sorted(sel.records["row"]) == [0, 1, 2, 4, 5]
    assert [b["rounds"] for b in sel.report["bins"]] == [2, 1]
    assert sel.report["shortfall"] == 1 and sel.report["shortfall_per_prompt_cap"] == 1


def reference_pick(rows, quotas, ppl_min, bin_width, cap):
    """Literal loop of the official scheme, each response taken at most once.

    Rows have distinct n_tokens, so longest first fixes the order inside a bin. Bins in ascending
    order; inside a bin, round 1, 2, ... walks the candidates and takes one whose prompt has fewer
    than `round` responses in this bin and fewer than `cap` overall; the bin stops at its quota,
    after round `cap`, or after a round that took nothing.
    Returns (selected rows sorted, taken per bin, rounds per bin).
    """
    n_bins = len(quotas)
    bins = [[] for _ in range(n_bins)]
    for r in rows:
        bins[decimal_bin(r["ppl"], ppl_min, bin_width, n_bins)].append(r)
    overall = Counter()
    selected, got, rounds = [], [0] * n_bins, [0] * n_bins
    for b in range(n_bins):
        candidates = sorted(bins[b], key=lambda r: -r["n_tokens"])
        in_bin, taken_here = Counter(), set()
        round_no = 0
        while got[b] < quotas[b] and (cap is None or round_no < cap):
            round_no += 1
            took = 0
            for r in candidates:
                if got[b] == quotas[b]:
                    break
                prompt = r["prompt_id"]
                if r["row"] in taken_here:
                    continue
                if cap is not None and overall[prompt] >= cap:
                    continue
                if in_bin[prompt] >= round_no:
                    continue
                taken_here.add(r["row"])
                in_bin[prompt] += 1
                overall[prompt] += 1
                selected.append(r["row"])
                got[b] += 1
                took += 1
            if took == 0:
                break
            rounds[b] = round_no
    return sorted(selected), got, rounds


def random_rows(seed, n_rows, n_prompts, ppl_lo, ppl_hi):
    """Rows with two-decimal PPLs (many exactly on bin edges) and distinct lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.permutation(np.arange(10, 10 + n_rows))
    return [
        {
            "prompt_id": int(rng.integers(0, n_prompts)),
            "ppl": float(np.round(rng.uniform(ppl_lo, ppl_hi), 2)),
            "n_tokens": int(lengths[i]),
            "correct": bool(rng.random() < 0.8),
            "row": i,
        }
        for i in range(n_rows)
    ]


def check_against_reference(rows, cap, n, mu, sigma, ppl_min, ppl_max, bin_width):
    selector = PPLGaussianSelector(
        n=n,
        mu=mu,
        sigma=sigma,
        ppl_min=ppl_min,
        ppl_max=ppl_max,
        bin_width=bin_width,
        max_per_prompt=cap,
        seed=3,
    )
    sel = selector(pool(rows))
    eligible = [r for r in rows if r["correct"] and ppl_min <= r["ppl"] <= ppl_max]
    quotas = reference_quotas(n, mu, sigma, ppl_min, ppl_max, bin_width)
    expected_rows, got, rounds = reference_pick(eligible, quotas, ppl_min, bin_width, cap)
    assert sorted(sel.records["row"]) == expected_rows
    assert [b["selected"] for b in sel.report["bins"]] == got
    assert [b["rounds"] for b in sel.report["bins"]] == rounds
    assert sel.report["rounds_used"] == max(rounds)
    assert sel.report["shortfall"] == n - len(expected_rows)
    available = Counter(decimal_bin(r["ppl"], ppl_min, bin_width, len(quotas)) for r in eligible)
    too_few = sum(max(q - available[b], 0) for b, q in enumerate(quotas))
    assert sel.report["shortfall_too_few_candidates"] == too_few
    assert sel.report["shortfall_per_prompt_cap"] == n - len(expected_rows) - too_few
    if cap is not None:
        assert max(Counter(sel.records["prompt_id"]).values()) <= cap
    return sel


@pytest.mark.parametrize("cap", [1, 2, 3, 10, None])
def test_selector_matches_plain_reference(cap):
    rows = random_rows(cap or 0, n_rows=600, n_prompts=120, ppl_lo=0.8, ppl_hi=2.4)
    check_against_reference(rows, cap, 300, 1.5, 0.3, 1.0, 2.0, 0.1)


def test_cap_ten_official_layout_matches_plain_reference():
    # 40 prompts with ~150 responses each over 80 bins: several per prompt per bin, so bins need
    # several rounds, and the overall cap of 10 stops prompts in the upper bins.
    rows = random_rows(10, n_rows=6000, n_prompts=40, ppl_lo=0.95, ppl_hi=5.05)
    sel = check_against_reference(
        rows, 10, 2000, 2.5, 0.25, **{k: OFFICIAL[k] for k in ("ppl_min", "ppl_max", "bin_width")}
    )
    assert sel.report["rounds_used"] > 1
    assert sel.report["shortfall_per_prompt_cap"] > 0
    assert max(Counter(sel.records["prompt_id"]).values()) == 10


# ---- bin edges ------------------------------------------------------------------------------


def test_two_decimal_edges_start_their_bin():
    # The 81 edges 1.00, 1.05, ..., 5.00 as written (parsed from two decimals): edge k starts bin k,
    # 5.00 closes the last bin. Float edges 1.0 + 0.05 * k would put 17 of them one bin lower.
    written = [float(f"{1.0 + 0.05 * k:.2f}") for k in range(81)]
    expected = [min(k, 79) for k in range(81)]
    assert assign_bins(np.array(written), 1.0, 0.05, 80).tolist() == expected
    assert [decimal_bin(v, 1.0, 0.05, 80) for v in written] == expected
    float_edges = [1.0 + 0.05 * k for k in range(80)]
    by_float_edges = [sum(e <= v for e in float_edges) - 1 for v in written]
    assert sum(a != b for a, b in zip(by_float_edges, expected)) == 17

    # Through the selector: a flat target gives every bin quota 2, one distinct prompt per edge.
    sel = PPLGaussianSelector(n=160, sigma=100.0)(
        pool([{"prompt_id": k, "ppl": v} for k, v in enumerate(written)])
    )
    assert [b["available"] for b in sel.report["bins"]] == [1] * 79 + [2]
    assert sel.report["n_selected"] == 81


def test_bins_match_exact_decimal_arithmetic():
    rng = np.random.default_rng(5)
    for ppl_min, ppl_max, w in [
        (1.0, 5.0, 0.05),
        (1.0, 5.0, 0.1),
        (0.3, 0.9, 0.1),
        (2.0, 2.7, 0.07),
    ]:
        n_bins = round((ppl_max - ppl_min) / w)
        values = np.round(rng.uniform(ppl_min, ppl_max, size=3000), int(rng.integers(2, 5)))
        values = np.clip(values, ppl_min, ppl_max)
        got = assign_bins(values, ppl_min, w, n_bins).tolist()
        assert got == [decimal_bin(float(v), ppl_min, w, n_bins) for v in values]


# ---- tie-break draw -------------------------------------------------------------------------


def test_tie_break_is_uniform_like_the_official_random_key():
    # One bin, quota 1, four candidates tied at the longest length: the pick must be uniform over
    # them, as the official's `sorted(key=(len, Random(seed).random()), reverse=True)` makes it.
    lengths = [40, 10, 40, 40, 40]
    rows = [{"prompt_id": i, "ppl": 1.05, "n_tokens": t} for i, t in enumerate(lengths)]
    seeds = range(400)
    ours = Counter(
        PPLGaussianSelector(n=1, mu=1.05, ppl_min=1.0, ppl_max=1.1, bin_width=0.1, seed=s)(
            pool(rows)
        ).records["row"][0]
        for s in seeds
    )
    official = Counter()
    for s in seeds:
        rnd = random.Random(s)
        order = sorted(range(5), key=lambda i: (lengths[i], rnd.random()), reverse=True)
        official[order[0]] += 1
    for picks in (ours, official):
        assert set(picks) == {0, 2, 3, 4}
        # 100 expected each; the bound is 4.6 binomial standard deviations.
        assert all(60 <= picks[i] <= 140 for i in (0, 2, 3, 4)), picks


def test_filters_out_of_range_and_incorrect():
    rows = [
        {"prompt_id": 0, "ppl": 0.99},
        {"prompt_id": 1, "ppl": 5.01},
        {"prompt_id": 2, "ppl": 2.5, "correct": False},
        {"prompt_id": 3, "ppl": 2.5, "correct": None},
        {"prompt_id": 4, "ppl": float("nan")},
        {"prompt_id": 5, "ppl": 2.5, "source": "self"},
        {"prompt_id": 6, "ppl": 2.5},
        {"prompt_id": 7, "ppl": 5.0},
        {"prompt_id": 8, "ppl": 1.0},
    ]
    # A nearly flat target (sigma 100) gives every bin a quota of 2, edge bins included.
    sel = PPLGaussianSelector(n=160, sigma=100.0, exclude_sources=["self"])(pool(rows))
    assert sorted(sel.records["prompt_id"]) == [6, 7, 8]
    assert all(sel.records["correct"])
    assert set(sel.records["loss_type"]) == {"ce"} and set(sel.records["selected_by"]) == {
        "ppl_gaussian"
    }
    assert sel.report["skipped"] == {
        "ppl_below_range": 1,
        "ppl_above_range": 1,
        "not_correct": 1,
        "unverified": 1,
        "ppl_nan": 1,
        "source_excluded": 1,
    }
    assert sel.report["shortfall"] == 157 and sel.report["n_selected"] == 3


def test_prefer_long_takes_longest_and_breaks_ties_by_seed():
    # One bin, quota 3, candidates: lengths 50, 40, 40, 40, 10 -> the 50 plus two of the three 40s.
    rows = [
        {"prompt_id": i, "ppl": 1.05, "n_tokens": t} for i, t in enumerate([10, 40, 50, 40, 40])
    ]
    picks = set()
    for seed in range(12):
        sel = PPLGaussianSelector(n=3, mu=1.05, ppl_min=1.0, ppl_max=1.1, bin_width=0.1, seed=seed)(
            pool(rows)
        )
        chosen = sorted(sel.records["row"])
        assert 2 in chosen and 0 not in chosen and len(chosen) == 3
        picks.add(tuple(chosen))
        again = PPLGaussianSelector(
            n=3, mu=1.05, ppl_min=1.0, ppl_max=1.1, bin_width=0.1, seed=seed
        )(pool(rows))
        assert sorted(again.records["row"]) == chosen
    assert len(picks) > 1, "ties in length must be broken by the seed, not by row order"


def test_plain_random_ignores_length_and_is_seeded():
    rows = [{"prompt_id": i, "ppl": 1.05, "n_tokens": i} for i in range(40)]
    kw = {
        "n": 10,
        "mu": 1.05,
        "ppl_min": 1.0,
        "ppl_max": 1.1,
        "bin_width": 0.1,
        "prefer_long": False,
    }
    a = sorted(PPLGaussianSelector(**kw, seed=1)(pool(rows)).records["row"])
    b = sorted(PPLGaussianSelector(**kw, seed=1)(pool(rows)).records["row"])
    c = sorted(PPLGaussianSelector(**kw, seed=2)(pool(rows)).records["row"])
    assert a == b and a != c
    assert a != list(range(30, 40)), "plain random must not be the longest ten"


def test_short_bin_reported():
    # Quotas 2 / 2 over two bins; bin 1 has one candidate.
    rows = [{"prompt_id": i, "ppl": p} for i, p in enumerate([1.01, 1.02, 1.03, 1.15])]
    sel = two_bins(n=4)(pool(rows))
    bins = sel.report["bins"]
    assert [b["quota"] for b in bins] == [2, 2]
    assert [b["available"] for b in bins] == [3, 1]
    assert [b["selected"] for b in bins] == [2, 1]
    assert [b["shortfall"] for b in bins] == [0, 1]
    assert sel.report["shortfall"] == 1 and sel.report["bins_short"] == 1
    assert sel.report["shortfall_too_few_candidates"] == 1


def test_large_pool_follows_quotas():
    rng = np.random.default_rng(0)
    n_rows = 40_000
    bins = rng.integers(0, 80, size=n_rows)
    # PPL strictly inside each bin (away from edges) so the test's own binning is unambiguous.
    ppl = 1.0 + 0.05 * (bins + rng.uniform(0.05, 0.95, size=n_rows))
    ds = datasets.Dataset.from_dict(
        {
            "prompt_id": np.arange(n_rows) // 2,
            "source": ["teacher"] * n_rows,
            "correct": rng.random(n_rows) < 0.9,
            "ppl": ppl,
            "n_tokens": rng.integers(100, 5000, size=n_rows),
        }
    )
    sel = PPLGaussianSelector(n=5000, seed=42)(ds)
    quotas = np.array(reference_quotas(5000, 2.5, 0.25, 1.0, 5.0, 0.05))
    got = np.bincount(((np.array(sel.records["ppl"]) - 1.0) / 0.05).astype(int), minlength=80)
    assert int(sel.report["shortfall"]) == int(quotas.sum() - got.sum())
    # Each bin holds ~500 candidates from ~450 correct ones, the largest quota is ~400.
    assert np.array_equal(got, quotas)
    assert max(Counter(sel.records["prompt_id"]).values()) == 1
    again = PPLGaussianSelector(n=5000, seed=42)(ds)
    assert again.records["n_tokens"] == sel.records["n_tokens"]
    assert again.records["prompt_id"] == sel.records["prompt_id"]
