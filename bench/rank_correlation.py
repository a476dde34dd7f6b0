"""Rank agreement between two orderings of the same items: Spearman's rho and Kendall's tau-b.

Both handle ties as the usual definitions do (average ranks for rho; tau-b's tie correction), and
return NaN when either side is constant (no order to agree with).
"""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, smallest value first; tied values share the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks of `x` and `y`."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) != len(ry):
        raise ValueError(f"spearman: {len(rx)} values against {len(ry)}")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)) over pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: {len(x)} values against {len(y)}")
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied_x, untied_y = (sx != 0).sum(), (sy != 0).sum()
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float((sx * sy).sum() / np.sqrt(untied_x * untied_y))
