"""PPL, GALP and LALP exactly as METHODS.md §1a and §2a define them, one plain forward pass per
scored context: full logits, no packing, no cache.

Slow (a pass per step) and never used to score a pool: this is the definition that the engines
(`scoring.galp`, `scoring.lalp`, `scoring.banded`) are checked against, in tests and benches.
Inputs are token ids: the context `c` (the prompt's, or empty to score the response alone) and
the response `y`, for LALP as its steps `s_1..s_p` (together exactly `y`). A token with nothing
before it (the first one, without a context) is not scored.
"""

from __future__ import annotations

import math

import torch

Window = int | float


def token_logps(model: torch.nn.Module, context: list[int], tokens: list[int]) -> list[float]:
    """log p(tokens_t | context, tokens_<t) for each of `tokens` that has something before it."""
    ids = context + tokens
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    first = max(len(context), 1)  # the first position with something before it
    targets = torch.tensor(ids[first:])
    return logp[first - 1 : len(ids) - 1].gather(-1, targets[:, None])[:, 0].tolist()


def galp(model: torch.nn.Module, context: list[int], response: list[int]) -> float:
    """GALP(y) = (1/T) sum_t log p(y_t | c, y_<t)."""
    scored = token_logps(model, context, response)
    return sum(scored) / len(scored)


def ppl(model: torch.nn.Module, context: list[int], response: list[int]) -> float:
    """PPL(y) = exp(-GALP(y)), conditioned the same way."""
    return math.exp(-galp(model, context, response))


def window_steps(i: int, window: Window, rounding: str = "ceil") -> int:
    """How many of the `i` steps before step `i` (0-based) it is scored with: an integer k gives
    min(k, i), a fraction f gives ceil(f * i) (or floor)."""
    if isinstance(window, int):
        return min(window, i)
    exact = round(window * i, 9)  # 0.1 * 30 is 3.0000000000000004 in floats
    return min(i, math.ceil(exact) if rounding == "ceil" else math.floor(exact))


def local_lps(
    model: torch.nn.Module, context: list[int], steps: list[list[int]], window: Window,
    rounding: str = "ceil",
) -> list[float]:
    """LocalLP(s_i) = (1/|s_i|) sum_{t in s_i} log p(y_t | c, s_{i-w}, ..., s_{i-1}, y_{s_i,<t}):
    each step given the context and only the steps of its window, fed to the model alone."""
    means = []
    for i, step in enumerate(steps):
        before = [t for s in steps[i - window_steps(i, window, rounding) : i] for t in s]
        scored = token_logps(model, context + before, step)
        means.append(sum(scored) / len(scored))
    return means


def lalp(
    model: torch.nn.Module, context: list[int], steps: list[list[int]], window: Window,
    rounding: str = "ceil",
) -> float:
    """LALP(y) = (1/p) sum_i LocalLP(s_i): every step weighs the same."""
    means = local_lps(model, context, steps, window, rounding)
    return sum(means) / len(means)
