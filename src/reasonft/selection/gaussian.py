"""OXA's Gaussian PPL selection (METHODS.md §1a): promote verified teacher responses whose
perplexity under the base student follows a truncated normal N(mu, sigma) on [ppl_min, ppl_max].

Reading of the per-prompt rule "at most m per prompt overall (official: first one per prompt per
bin, then a second round, ... up to the cap)", implemented exactly as follows:

- Each bin's candidates are put in a fixed order first: longest first (`n_tokens` descending,
  equal lengths in a seeded random order) when `prefer_long`, else a seeded random order.
- Round r = 1, 2, ..., m: the bins are visited in ascending PPL order; a bin that has not reached
  its quota walks its ordered candidates and takes each one whose prompt has fewer than r selected
  responses so far (over all bins), until its quota is met. So round 1 gives every prompt at most
  one response overall (and each bin at most one per prompt), round 2 at most a second, and so on;
  no prompt gets an r-th response while a bin could still be filled with a prompt's (r-1)-th.
- Rounds stop early once every quota is met. A bin that is still short after round m gives what
  it has; nothing is moved to other bins, and the shortfall is reported per bin and in total,
  split into "too few candidates in the bin" and "candidates blocked by the per-prompt cap".

With the official m = 1 this is: bins in ascending PPL order, each takes its best-ordered
candidates from prompts not yet used by any bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pandas as pd
from rich.progress import Progress

from reasonft.selection.base import Selection, Selector, check_positive

# Fractional parts are compared after rounding to this many decimals, so that bins whose quotas are
# mathematically tied (e.g. bins mirrored around mu) tie exactly, whatever the float noise.
FRACTION_DECIMALS = 9


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

    Bin i covers [ppl_min + i*w, ppl_min + (i+1)*w) (the last bin also holds ppl_max), its centre
    is ppl_min + (i + 0.5)*w. quota_i = N * pdf(centre_i) / sum_j pdf(centre_j), floored; the
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


def assign_bins(ppl: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each PPL inside [edges[0], edges[-1]]: [lo, hi) bins, the last one closed."""
    n_bins = len(edges) - 1
    return np.clip(np.searchsorted(edges, ppl, side="right") - 1, 0, n_bins - 1)


class PPLGaussianSelector(Selector):
    """OXA promote set: verified responses whose PPL histogram follows N(mu, sigma) (loss type ce)."""

    name = "ppl_gaussian"
    loss_type = "ce"

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
    ) -> None:
        super().__init__(only_correct, sources, exclude_sources, seed)
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
        bins = assign_bins(ppl, self.edges)

        ordered = self.order_candidates(frame, pool, bins)
        prompt_codes = pd.factorize(frame["prompt_id"])[0]
        selected, per_bin, rounds = self.fill(ordered, prompt_codes)

        available = np.array([len(rows) for rows in ordered], dtype=np.int64)
        report = self.bin_report(available, per_bin)
        report.update(skipped=skipped, n_candidates=len(pool), rounds_used=rounds)
        return self.finish(ds, selected, report)

    def order_candidates(
        self, frame: pd.DataFrame, pool: np.ndarray, bins: np.ndarray
    ) -> list[np.ndarray]:
        """Each bin's candidate rows in picking order (longest first, or random), seeded."""
        order = np.random.default_rng(self.seed).permutation(pool)
        if self.prefer_long:
            n_tokens = frame["n_tokens"].to_numpy(float)
            order = order[np.argsort(-n_tokens[order], kind="stable")]
        order = order[np.argsort(bins[order], kind="stable")]
        starts = np.searchsorted(bins[order], np.arange(len(self.quotas) + 1))
        return [order[starts[b] : starts[b + 1]] for b in range(len(self.quotas))]

    def fill(
        self, ordered: list[np.ndarray], prompt_codes: np.ndarray
    ) -> tuple[list[int], np.ndarray, int]:
        """The round scheme described in the module docstring. Returns (rows, taken per bin, rounds)."""
        n_bins = len(self.quotas)
        per_prompt = np.zeros(prompt_codes.max() + 1 if len(prompt_codes) else 0, dtype=np.int64)
        cap = self.max_per_prompt
        if cap is None:
            # Round r only hands out a prompt's r-th response, so more rounds than the largest
            # number of candidates of one prompt add nothing.
            pool_rows = np.concatenate(ordered)
            cap = int(np.bincount(prompt_codes[pool_rows]).max()) if len(pool_rows) else 1
        taken_per_bin = np.zeros(n_bins, dtype=np.int64)
        is_taken = np.zeros(len(prompt_codes), dtype=bool)
        selected: list[int] = []
        rounds = 0
        with Progress(transient=True) as progress:
            task = progress.add_task(f"select[{self.name}] rounds x bins", total=cap * n_bins)
            for round_no in range(1, cap + 1):
                if (taken_per_bin >= self.quotas).all():
                    break
                rounds = round_no
                for b, rows in enumerate(ordered):
                    need = int(self.quotas[b] - taken_per_bin[b])
                    for row in rows:
                        if need == 0:
                            break
                        code = prompt_codes[row]
                        if is_taken[row] or per_prompt[code] >= round_no:
                            continue
                        is_taken[row] = True
                        per_prompt[code] += 1
                        selected.append(int(row))
                        need -= 1
                    taken_per_bin[b] = self.quotas[b] - need
                    progress.advance(task)
        return selected, taken_per_bin, rounds

    def bin_report(self, available: np.ndarray, taken: np.ndarray) -> dict[str, Any]:
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
            "bin_edges": [float(e) for e in self.edges],
            "bins": bins,
            "shortfall": int(short.sum()),
            "bins_short": int((short > 0).sum()),
            "shortfall_too_few_candidates": int(from_scarcity.sum()),
            "shortfall_per_prompt_cap": int(short.sum() - from_scarcity.sum()),
        }
