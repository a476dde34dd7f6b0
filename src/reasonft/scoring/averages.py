"""The scores of METHODS.md §1a and §2a, from per-token log-probabilities.

Token log-probs come as float arrays with NaN at tokens that are not scored (the first token
of a response scored without any context). Means are taken in float64.
"""

from __future__ import annotations

import math

import numpy as np


def galp(token_logps: np.ndarray) -> float | None:
    """GALP = mean log p(y_t | x, y_<t) over the scored tokens; None when none is scored."""
    lp = np.asarray(token_logps, dtype=np.float64)
    scored = lp[~np.isnan(lp)]
    return float(scored.mean()) if scored.size else None


def ppl_from_galp(galp_value: float | None) -> float | None:
    """PPL = exp(-GALP) (same conditioning as the GALP it comes from)."""
    return None if galp_value is None else math.exp(-galp_value)


def ppl_official_bf16(token_logps: np.ndarray) -> float | None:
    """PPL with the official PPL script's numerics: the per-token loss, its sum and its mean each
    rounded to bfloat16 (the sum accumulated in float32 first, as torch sums bfloat16), then
    exp in double. None when no token is scored (the script writes NaN there)."""
    import torch

    lp = np.asarray(token_logps, dtype=np.float64)
    scored = lp[~np.isnan(lp)]
    if not scored.size:
        return None
    loss = torch.from_numpy(-scored).float().to(torch.bfloat16)
    mean = loss.sum() / torch.tensor(scored.size)
    return math.exp(float(mean.item()))


def step_means(token_logps: np.ndarray, token_step: np.ndarray, n_steps: int) -> list[float]:
    """Mean log-prob of the scored tokens of each step ((1/|s_i|) sum_{t in s_i} log p)."""
    lp = np.asarray(token_logps, dtype=np.float64)
    scored = ~np.isnan(lp)
    sums = np.bincount(token_step[scored], weights=lp[scored], minlength=n_steps)
    counts = np.bincount(token_step[scored], minlength=n_steps)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"steps {empty} have no scored token; token_steps.ensure_scored_token prevents this"
        )
    return (sums / counts).tolist()


def lalp(step_logps: list[float]) -> float | None:
    """LALP = (1/p) sum_i LocalLP(s_i): every step weighs the same."""
    return float(np.mean(np.asarray(step_logps, dtype=np.float64))) if step_logps else None
