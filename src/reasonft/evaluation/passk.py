"""Pass@k: the unbiased estimator of Chen et al. (2021), METHODS.md §3.

pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i), and 1 when n - c < k.
The product is summed in log space (log1p) and turned back with expm1, so the result keeps full
relative precision even when it is tiny (c = 1 of thousands), with no factorial or binomial
coefficient ever formed.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from reasonft.data.records import as_dataset, require_columns


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"pass@k: {name}={value!r} must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"pass@k: {name}={value!r} must be an integer") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    n, c, k = _count(n, "n"), _count(c, "c"), _count(k, "k")
    if n < 0 or c < 0:
        raise ValueError(f"pass@k: n={n} and c={c} must be >= 0")
    if k < 1:
        raise ValueError(f"pass@k: k={k} must be >= 1")
    if c > n:
        raise ValueError(f"pass@k: c={c} correct out of n={n} samples is impossible")
    if k > n:
        raise ValueError(f"pass@k: k={k} is larger than the n={n} samples drawn")
    if n - c < k:
        return 1.0
    log_all_wrong = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return -math.expm1(log_all_wrong)


def counts_from_correct(correct: Iterable[Sequence[Any]]) -> list[tuple[int, int]]:
    """Per problem (n, c) from per-problem lists (or arrays) of correctness flags."""
    return [(len(row), int(sum(bool(x) for x in row))) for row in correct]


def counts_by_prompt(records: Any) -> dict[str, tuple[int, int]]:
    """Per prompt_id (n, c) from verified records (columns prompt_id, correct)."""
    ds = as_dataset(records)
    require_columns(ds, ["prompt_id", "correct"], "pass@k")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for prompt_id, correct in zip(ds["prompt_id"], ds["correct"], strict=True):
        counts[prompt_id][0] += 1
        counts[prompt_id][1] += bool(correct)
    return {p: (n, c) for p, (n, c) in counts.items()}


def pass_at_k_table(
    ks: Sequence[int],
    *,
    counts: Sequence[tuple[int, int]] | None = None,
    correct: Iterable[Sequence[Any]] | None = None,
) -> dict[str, float | int]:
    """Mean pass@k over problems for each k, plus pass@1 and the "any correct" rate.

    Give exactly one of `counts` (per problem (n, c)) or `correct` (per problem flags).
    `pass@1` is the mean over problems of c/n — the mean correctness over all samples when
    every problem has the same n. `any_correct` is the share of problems with at least one
    correct sample among all n (what the OXA paper reports as Pass@k with k = n).
    """
    if (counts is None) == (correct is None):
        raise ValueError(
            "pass_at_k_table: give exactly one of counts=[(n, c), ...] or correct=[[flags], ...]"
        )
    pairs = list(counts) if counts is not None else counts_from_correct(correct)
    if not pairs:
        raise ValueError("pass_at_k_table: no problems")
    for i, (n, c) in enumerate(pairs):
        if _count(n, "n") < 1:
            raise ValueError(
                f"pass_at_k_table: problem {i} has n={n} samples; each needs at least one"
            )
    table: dict[str, float | int] = {
        "n_problems": len(pairs),
        "n_samples": sum(n for n, _ in pairs),
    }
    for k in sorted({1, *(_count(k, "k") for k in ks)}):
        too_few = [i for i, (n, _) in enumerate(pairs) if n < k]
        if too_few:
            raise ValueError(
                f"pass@{k}: problem {too_few[0]} has only {pairs[too_few[0]][0]} samples "
                f"({len(too_few)} problems have fewer than {k}); draw more samples or lower k"
            )
        table[f"pass@{k}"] = math.fsum(pass_at_k(n, c, k) for n, c in pairs) / len(pairs)
    table["any_correct"] = sum(c > 0 for _, c in pairs) / len(pairs)
    return table
