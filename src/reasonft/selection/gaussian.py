"""OXA's Gaussian PPL selection (METHODS.md §1a): promote verified teacher responses whose
perplexity under the base student follows a truncated normal N(mu, sigma) on [ppl_min, ppl_max].

Decided as the official selection script (takagi97/OXA-Fine-tuning, make_OXA_MLE_data.py) decides:

- A response's bin is floor((ppl - ppl_min) / bin_width + 1e-9), the last bin closed at ppl_max,
  so a PPL written on a bin edge (2.40 with width 0.05) starts that bin whatever the float
  rounding of the edge.
- Each bin's candidates are ordered longest first (`n_tokens` descending, equal lengths in a
  seeded random order) when `prefer_long`, else in a seeded random order.
- Bins are filled one after another in ascending PPL order. Inside a bin, round r = 1, 2, ...
  walks the ordered candidates and takes each not yet taken one whose prompt has fewer than r
  responses taken in this bin and fewer than m (`max_per_prompt`) over all bins so far, until the
  bin's quota is met; only then does the next bin start. With m = 1 a bin takes its best-ordered
  candidates from prompts no lower bin has used.
- A bin still short when no round can add anything gives what it has; nothing moves to other
  bins, and the shortfall is reported per bin and in total, split into "too few candidates in the
  bin" and "candidates blocked by the per-prompt cap".

Where this departs from the official script: its round r walks every candidate again without
remembering which were taken, so with m > 1 round 2 takes the round-1 responses a second time
(duplicates in the output) instead of a prompt's second response; here a response is taken at
most once (kept: the official duplicates are a bug, not a choice). The order of equal lengths
(or, without `prefer_long`, of a bin) is `tie_break`:

- `permutation` (default): one numpy permutation of the pool, seeded — uniform over the orders
  of equal lengths, and a bin's order does not depend on the other bins.
- `official`: the official draws, record for record: one `random.Random(seed)` walks the bins in
  ascending order, skipping bins whose quota is 0; in each it draws one `random()` per candidate
  in record order, and orders by (length, draw) descending (`prefer_long`), or shuffles the bin
  with it. A bin's order then depends on how many candidates the bins below it had.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pandas as pd

from reasonft.selection.base import Selection, Selector, check_positive

# Fractional parts are compared after rounding to this many decimals, so that bins whose quotas are
# mathematically tied (e.g. bins mirrored around mu) tie exactly, whatever the float noise.
FRACTION_DECIMALS = 9

TIE_BREAKS = ("permutation", "official")

# Added to (ppl - ppl_min) / bin_width before flooring, as the official script does, so that a PPL
# on a bin edge is not pushed into the bin below by float rounding of the division.
BIN_EPSILON = 1e-9


def count_bins(ppl_min: float, ppl_max: float, bin_width: float) -> int:
    """Number of bins of width `bin_width` covering [ppl_min, ppl_max]; the span must be a multiple."""
    if not (math.isfinite(ppl_min) and math.isfinite(ppl_max) and ppl_max > ppl_min):
        raise ValueError(f"ppl range must satisfy ppl_min < ppl_max, got [{ppl_min}, {ppl_max}]")
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    span = (ppl_max - ppl_min) / bin_width
    n_bins = round(span)
    # (5.0 - 1.0) / 0.05 is 79.99999999999999 in floats: round, then check it really is a multiple.
    if n_bins < 1 or abs(span - n_bins) > 1e-6 * max(1.0, span):
        raise ValueError(
            f"ppl range [{ppl_min}, {ppl_max}] is not a whole number of bins of width {bin_width} "
            f"({span:.6g} bins); pick a bin_width that divides ppl_max - ppl_min"
        )
    return n_bins


def gaussian_quotas(
    n: int, mu: float, sigma: float, ppl_min: float, ppl_max: float, bin_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and per-bin quotas for Gaussian PPL selection (METHODS.md §1a).

    Bin i covers [ppl_min + i*w, ppl_min + (i+1)*w) (the last bin also holds ppl_max; which bin
    a PPL falls in is `assign_bins`), its centre is ppl_min + (i + 0.5)*w. quota_i = N * pdf(centre_i) / sum_j pdf(centre_j), floored; the
    N - sum(floors) remaining units go one each to the bins with the largest fractional parts.
    Ties in fractional part (compared rounded to 9 decimals) go to the lower bin index first.
    The quotas sum to exactly N.

    Returns (edges, quotas): float64 array of n_bins + 1 edges, int64 array of n_bins quotas.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be > 0, got {sigma}")
    n = int(n)
    n_bins = count_bins(ppl_min, ppl_max, bin_width)
    edges = ppl_min + bin_width * np.arange(n_bins + 1, dtype=np.float64)
    edges[-1] = ppl_max
    centres = ppl_min + (np.arange(n_bins, dtype=np.float64) + 0.5) * bin_width
    pdf = np.exp(-0.5 * ((centres - mu) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))
    total = pdf.sum()
    if not total > 0:
        raise ValueError(
            f"N({mu}, {sigma}) has no mass at any bin centre of [{ppl_min}, {ppl_max}]; "
            f"move mu into the range or widen sigma"
        )
    exact = n * pdf / total
    quotas = np.floor(exact).astype(np.int64)
    fractions = np.round(exact - quotas, FRACTION_DECIMALS)
    remainder = n - int(quotas.sum())
    # Stable sort on the negated fraction: largest fraction first, lower bin index on ties.
    order = np.argsort(-fractions, kind="stable")
    quotas[order[:remainder]] += 1
    return edges, quotas


def assign_bins(ppl: np.ndarray, ppl_min: float, bin_width: float, n_bins: int) -> np.ndarray:
    """Bin index floor((ppl - ppl_min) / bin_width + 1e-9) of in-range PPLs, ppl_max in the last bin."""
    index = np.floor((np.asarray(ppl, dtype=np.float64) - ppl_min) / bin_width + BIN_EPSILON)
    return np.clip(index, 0, n_bins - 1).astype(np.int64)


def fill_bin(
    rows: np.ndarray, prompt_codes: np.ndarray, per_prompt: np.ndarray, quota: int, cap: int | None
) -> tuple[np.ndarray, int]:
    """One bin's per-prompt rounds (module docstring), vectorised; `per_prompt` is updated in place.

    `rows` are the bin's candidates in picking order. Round r takes, for every prompt still under
    the overall cap, its r-th candidate in that order, so the rounds together take the candidates
    sorted by (occurrence rank of their prompt in the bin, position), minus the occurrences beyond
    each prompt's remaining allowance, cut at the quota.
    Returns (taken rows in taking order, number of rounds the bin used).
    """
    if quota == 0 or len(rows) == 0:
        return rows[:0], 0
    codes = prompt_codes[rows]
    rank = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    allowed = np.full(len(rows), np.iinfo(np.int64).max) if cap is None else cap - per_prompt[codes]
    eligible = np.flatnonzero(rank < allowed)
    taking = eligible[np.lexsort((eligible, rank[eligible]))][:quota]
    np.add.at(per_prompt, codes[taking], 1)
    rounds = int(rank[taking].max()) + 1 if len(taking) else 0
    return rows[taking], rounds


class PPLGaussianSelector(Selector):
    """OXA promote set: verified responses whose PPL histogram follows N(mu, sigma) (loss type ce)."""

    name = "ppl_gaussian"
    loss_type = "ce"

    @property
    def score_columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("ppl", "n_tokens") if self.prefer_long else ("ppl",)

    def __init__(
        self,
        n: int = 50_000,
        mu: float = 2.5,
        sigma: float = 0.25,
        ppl_min: float = 1.0,
        ppl_max: float = 5.0,
        bin_width: float = 0.05,
        max_per_prompt: int | None = 1,
        prefer_long: bool = True,
        only_correct: bool = True,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] | None = None,
        seed: int = 42,
        tie_break: str = "permutation",
    ) -> None:
        super().__init__(only_correct, sources, exclude_sources, seed)
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"select[{self.name}]: tie_break={tie_break!r}; choose one of {TIE_BREAKS}")
        self.tie_break = tie_break
        check_positive("n", n, self.name)
        check_positive("max_per_prompt", max_per_prompt, self.name, allow_none=True)
        self.n = int(n)
        self.mu, self.sigma = float(mu), float(sigma)
        self.ppl_min, self.ppl_max, self.bin_width = (
            float(ppl_min),
            float(ppl_max),
            float(bin_width),
        )
        self.max_per_prompt = None if max_per_prompt is None else int(max_per_prompt)
        self.prefer_long = bool(prefer_long)
        # Fail at construction, not after scoring, when the bin layout is impossible.
        self.edges, self.quotas = gaussian_quotas(
            self.n, self.mu, self.sigma, self.ppl_min, self.ppl_max, self.bin_width
        )

    def __call__(self, ds: datasets.Dataset) -> Selection:
        score_cols = ["ppl", *(["n_tokens"] if self.prefer_long else [])]
        frame, keep, skipped = self.filtered(ds, score_cols)
        ppl = frame["ppl"].to_numpy(float)
        for reason, outside in (
            ("ppl_below_range", ppl < self.ppl_min),
            ("ppl_above_range", ppl > self.ppl_max),
        ):
            if (keep & outside).any():
                skipped[reason] = int((keep & outside).sum())
            keep &= ~outside
        pool = np.flatnonzero(keep)
        bins = assign_bins(ppl[pool], self.ppl_min, self.bin_width, len(self.quotas))

        ordered = self.order_candidates(frame, pool, bins)
        prompt_codes = pd.factorize(frame["prompt_id"])[0]
        per_prompt = np.zeros(prompt_codes.max() + 1 if len(prompt_codes) else 0, dtype=np.int64)
        selected: list[np.ndarray] = []
        taken = np.zeros(len(self.quotas), dtype=np.int64)
        rounds = np.zeros(len(self.quotas), dtype=np.int64)
        for b, rows in enumerate(ordered):
            chosen, rounds[b] = fill_bin(
                rows, prompt_codes, per_prompt, int(self.quotas[b]), self.max_per_prompt
            )
            taken[b] = len(chosen)
            selected.append(chosen)

        available = np.array([len(rows) for rows in ordered], dtype=np.int64)
        report = self.bin_report(available, taken, rounds)
        report.update(skipped=skipped, n_candidates=len(pool), rounds_used=int(rounds.max()))
        return self.finish(ds, np.concatenate(selected).tolist(), report)

    def order_candidates(
        self, frame: pd.DataFrame, pool: np.ndarray, bins: np.ndarray
    ) -> list[np.ndarray]:
        """Each bin's candidate rows (`pool` with their `bins`) in picking order, seeded."""
        if self.tie_break == "official":
            return self.official_order(frame, pool, bins)
        position = np.random.default_rng(self.seed).permutation(len(pool))
        if self.prefer_long:
            n_tokens = frame["n_tokens"].to_numpy(float)[pool]
            position = position[np.argsort(-n_tokens[position], kind="stable")]
        position = position[np.argsort(bins[position], kind="stable")]
        starts = np.searchsorted(bins[position], np.arange(len(self.quotas) + 1))
        return [pool[position[starts[b] : starts[b + 1]]] for b in range(len(self.quotas))]

    def official_order(
        self, frame: pd.DataFrame, pool: np.ndarray, bins: np.ndarray
    ) -> list[np.ndarray]:
        """The official script's order (module docstring): one `random.Random(seed)` over the
        bins in ascending order, those with a zero quota skipped without drawing."""
        draw = random.Random(self.seed)
        lengths = frame["n_tokens"].to_numpy(float) if self.prefer_long else None
        ordered = []
        for b in range(len(self.quotas)):
            rows = pool[bins == b].tolist()  # record order
            if self.quotas[b] <= 0:
                ordered.append(np.asarray(rows, dtype=np.int64))
                continue
            if self.prefer_long:
                keys = {row: (int(lengths[row]), draw.random()) for row in rows}
                rows.sort(key=keys.__getitem__, reverse=True)
            else:
                draw.shuffle(rows)
            ordered.append(np.asarray(rows, dtype=np.int64))
        return ordered

    def bin_report(
        self, available: np.ndarray, taken: np.ndarray, rounds: np.ndarray
    ) -> dict[str, Any]:
        short = self.quotas - taken
        from_scarcity = np.maximum(self.quotas - available, 0)
        bins = [
            {
                "lo": float(self.edges[b]),
                "hi": float(self.edges[b + 1]),
                "quota": int(self.quotas[b]),
                "available": int(available[b]),
                "selected": int(taken[b]),
                "shortfall": int(short[b]),
                "rounds": int(rounds[b]),
            }
            for b in range(len(self.quotas))
        ]
        return {
            "n": self.n,
            "mu": self.mu,
            "sigma": self.sigma,
            "ppl_min": self.ppl_min,
            "ppl_max": self.ppl_max,
            "bin_width": self.bin_width,
            "max_per_prompt": self.max_per_prompt,
            "prefer_long": self.prefer_long,
            "seed": self.seed,
            "tie_break": self.tie_break,
            "bin_edges": [float(e) for e in self.edges],
            "bins": bins,
            "shortfall": int(short.sum()),
            "bins_short": int((short > 0).sum()),
            "shortfall_too_few_candidates": int(from_scarcity.sum()),
            "shortfall_per_prompt_cap": int(short.sum() - from_scarcity.sum()),
        }
