"""The reward rule of the official OXA RL recipe (METHODS.md §1f): a third grader.

As the authors' verl reward function behaves:
- a response without `</think>` scores 0 (status "no_think");
- the prediction is the whole text after the **last** `</think>` (not one box read out of it);
- math-verify's `math_metric` compares it with the gold answer wrapped in `\\boxed{...}`, the
  gold read as LaTeX, the prediction as an expression or as LaTeX (math-verify then prefers the
  last `\\boxed{}` of the text, nested braces included).

`rl_extract(response)` is the answer rule (the Verifier's `answer_rule=after_last_think`),
`rl_equal(region, gold)` the comparison (its `verify_fn`), `rl_verdict(response, gold)` both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from reasonft.verify.extract import THINK_END


def rl_extract(response: str) -> tuple[str | None, str]:
    """(text after the last `</think>`, "ok"), or (None, "no_think") when there is none."""
    if THINK_END not in response:
        return None, "no_think"
    return response.rsplit(THINK_END, 1)[1], "ok"


@functools.lru_cache(maxsize=1)
def _metric() -> Callable[[list[str], list[str]], tuple[float, Any]]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, math_metric

    return math_metric(
        gold_extraction_target=(LatexExtractionConfig(),),
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()),
    )


def rl_equal(region: str, gold: str) -> bool:
    """Whether math-verify finds `region` (the text after the last `</think>`) equal to the gold
    answer `gold` (a bare answer string; it is boxed here, as the official reward does)."""
    score, _ = _metric()([f"\\boxed{{{gold}}}"], [region])
    return score > 0


def rl_verdict(response: str, gold: str) -> bool:
    """The whole §1f rule on one response, in this process (the stage runs it in the Verifier's
    worker processes, with a time limit)."""
    region, _status = rl_extract(response)
    if region is None:
        return False
    try:
        return rl_equal(region, gold)
    except Exception:  # noqa: BLE001 - the official reward counts a grader failure as 0
        return False
