"""The official selection scripts' tie handling, offered as named options, against plain
references written from their description; NaN PPLs are never selected, and counted."""

from __future__ import annotations

import math
import random

import datasets
import numpy as np
import pytest

from reasonft.selection.confident_incorrect import ConfidentIncorrectSelector
from reasonft.selection.gaussian import PPLGaussianSelector, gaussian_quotas

WINDOW = {"mu": 2.0, "sigma": 0.5, "ppl_min": 1.0, "ppl_max": 3.0, "bin_width": 0.25}


def _pool(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows)


def _teacher_pool(seed: int = 3, n_prompts: int = 90, per_prompt: int = 3) -> list[dict]:
    """Lengths drawn from few values (many ties in every bin), PPLs over several bins."""
    rng = random.Random(seed)
    return [
        {"prompt_id": f"q{p}", "source": "t", "correct": True,
         "ppl": round(rng.uniform(1.0, 3.0), 2), "n_tokens": rng.choice([100, 200, 300])}
        for p in range(n_prompts) for _ in range(per_prompt)
    ]


def official_gaussian_reference(rows, n, mu, sigma, ppl_min, ppl_max, bin_width, prefer_long, seed=42):
    """The official promote sampling, as its description reads: records grouped by bin in record
    order; one random.Random(seed) over the bins in ascending order, skipping bins whose target is
    0; (length, random()) descending or a shuffle; rounds r = 1, 2, ... over the ordered bin with
    at most one response per query (max 1 per query overall)."""
    _, quotas = gaussian_quotas(n, mu, sigma, ppl_min, ppl_max, bin_width)
    n_bins = len(quotas)
    by_bin: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if ppl_min <= r["ppl"] <= ppl_max:
            b = min(int((r["ppl"] - ppl_min) / bin_width + 1e-9), n_bins - 1)
            by_bin.setdefault(b, []).append(i)
    rnd = random.Random(seed)
    used: set[str] = set()
    taken = []
    for b in range(n_bins):
        target = int(quotas[b])
        if target <= 0:
            continue
        items = list(by_bin.get(b, []))
        if prefer_long:
            items = sorted(items, key=lambda i: (rows[i]["n_tokens"], rnd.random()), reverse=True)
        else:
            rnd.shuffle(items)
        got = 0
        for i in items:
            if got >= target:
                break
            if rows[i]["prompt_id"] not in used:
                used.add(rows[i]["prompt_id"])
                taken.append(i)
                got += 1
    return sorted(taken)


@pytest.mark.parametrize("prefer_long", [True, False])
def test_official_tie_break_reproduces_the_official_draws(prefer_long):
    rows = _teacher_pool()
    settings = {"n": 60, **WINDOW, "max_per_prompt": 1, "prefer_long": prefer_long, "seed": 42}
    expected = official_gaussian_reference(rows, **{k: settings[k] for k in ("n", *WINDOW)},
                                           prefer_long=prefer_long)
    official = PPLGaussianSelector(**settings, tie_break="official")(_pool(rows))
    assert _rows(official, rows) == expected
    assert official.report["tie_break"] == "official"
    default = PPLGaussianSelector(**settings)(_pool(rows))
    assert _rows(default, rows) != expected  # ties drawn otherwise: the option is what reproduces


def _rows(selection, rows) -> list[int]:
    """Row positions of the selected records (each record is unique by prompt, ppl, length)."""
    key = {(r["prompt_id"], r["ppl"], r["n_tokens"]): i for i, r in enumerate(rows)}
    return sorted(key[(p, x, t)] for p, x, t in zip(
        selection.records["prompt_id"], selection.records["ppl"], selection.records["n_tokens"],
        strict=True))


def official_heap_reference(rows, n, min_ppl):
    """The official suppress selection as described: each query's lowest PPL >= min_ppl (queries
    in record order), streamed into the n lowest; when full, a candidate replaces the kept one
    with the highest PPL (the earliest arrival among equal highest) only if strictly lower."""
    best: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["ppl"] >= min_ppl and (r["prompt_id"] not in best or r["ppl"] < rows[best[r["prompt_id"]]]["ppl"]):
            best[r["prompt_id"]] = i
    kept: list[tuple[int, int]] = []  # (arrival, row)
    for arrival, i in enumerate(best.values()):
        if len(kept) < n:
            kept.append((arrival, i))
            continue
        worst = max(kept, key=lambda k: (rows[k[1]]["ppl"], -k[0]))
        if rows[i]["ppl"] < rows[worst[1]]["ppl"]:
            kept[kept.index(worst)] = (arrival, i)
    return sorted(i for _, i in kept)


def test_official_heap_keeps_the_official_subset_of_cut_off_ties():
    # 20 prompts whose best is 1.3, then 10 at 1.2, then 10 at 1.4 (each with a worse 1.5, and
    # one below the floor): the 25 kept hold the 10 at 1.2 and 15 of the 20 tied at 1.3. The
    # heap fills with the 1.3s and the 1.2s that arrive later push out the earliest 1.3s.
    rows = []
    for p, best in enumerate([1.3] * 20 + [1.2] * 10 + [1.4] * 10):
        for ppl in (1.5, best, 1.1):
            rows.append({"prompt_id": f"q{p}", "source": "self", "correct": False, "ppl": ppl})
    expected = official_heap_reference(rows, n=25, min_ppl=1.2)
    chosen = ConfidentIncorrectSelector(n=25, cutoff_ties="official_heap")(_pool(rows))
    got = sorted(_suppressed_rows(chosen, rows))
    assert got == expected
    row_order = sorted(_suppressed_rows(ConfidentIncorrectSelector(n=25)(_pool(rows)), rows))
    cut = max(rows[i]["ppl"] for i in expected)
    assert row_order != expected  # the two differ only among the records tied at the cut-off
    assert [rows[i]["ppl"] for i in row_order if rows[i]["ppl"] < cut] == [
        rows[i]["ppl"] for i in expected if rows[i]["ppl"] < cut]


def _suppressed_rows(selection, rows) -> list[int]:
    """Each prompt contributes one record: its row by (prompt, ppl), the first of equal ones."""
    first = {}
    for i, r in enumerate(rows):
        first.setdefault((r["prompt_id"], r["ppl"]), i)
    return [first[(p, x)] for p, x in zip(selection.records["prompt_id"], selection.records["ppl"], strict=True)]


@pytest.mark.parametrize("official", [False, True])
def test_nan_ppls_are_never_selected_and_counted(official):
    """The official scripts keep NaN PPLs (their value for a response of at most one token;
    `NaN < 1.2` is false); here a NaN is no confidence: left out, counted as ppl_nan."""
    rows = [{"prompt_id": f"q{i}", "source": "self", "correct": False, "ppl": 1.3 + i / 100,
             "n_tokens": 50} for i in range(6)]
    for i in (1, 4):
        rows[i]["ppl"] = math.nan
    rows.append({"prompt_id": "q9", "source": "self", "correct": False, "ppl": None, "n_tokens": 50})
    suppress = ConfidentIncorrectSelector(n=10, cutoff_ties="official_heap" if official else "row_order")
    chosen = suppress(_pool(rows))
    assert not any(math.isnan(x) for x in chosen.records["ppl"]) and len(chosen.records) == 4
    assert chosen.report["skipped"] == {"ppl_nan": 2, "missing_ppl": 1}
    teacher = [{**r, "source": "t", "correct": True} for r in rows]
    window = {**WINDOW, "mu": 1.375, "sigma": 0.1}  # the quota in the bin [1.25, 1.5)
    promote = PPLGaussianSelector(n=4, **window, tie_break="official" if official else "permutation",
                                  prefer_long=True)(_pool(teacher))
    assert promote.report["skipped"] == {"ppl_nan": 2, "missing_ppl": 1}
    assert np.isfinite(promote.records["ppl"]).all() and len(promote.records) == 4
