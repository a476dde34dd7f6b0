"""The official OXA evaluation's grader: DeepScaleR's reward function (METHODS.md §1e).

Its rule, as its code behaves:
- a response without `</think>` is wrong (status "no_think");
- the answer region is the text after the *first* `</think>`, up to a second one if any;
- the answer is the content of the last `\\boxed{...}` there, braces counted as written (no
  `\\fbox`, no brace-less `\\boxed 5`; a last box that never closes gives no answer);
- a gold answer holding `\\boxed{...}` is read the same way;
- the answer is correct when it equals a gold form under MATH-style normalisation
  (`math_normalize`) or under the sympy check (`sympy_equal`).

`official_equal(pred, gold)` is the comparison of two answer strings (the Verifier's
`verify_fn` for `verify=official`); `official_verdict(response, gold)` applies the whole rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from reasonft.verify.extract import THINK_END, last_boxed_official
from reasonft.verify.math_normalize import math_normalize
from reasonft.verify.sympy_equal import sympy_equal


def official_answer_region(response: str) -> str | None:
    """Text between the first `</think>` and the next one (or the end); None without any."""
    if THINK_END not in response:
        return None
    return response.split(THINK_END)[1]


def official_extract(response: str) -> tuple[str | None, str]:
    """(answer, status): status "no_think" (no `</think>`), "no_answer" or "ok"."""
    region = official_answer_region(response)
    if region is None:
        return None, "no_think"
    answer = last_boxed_official(region)
    return (None, "no_answer") if answer is None else (answer, "ok")


def official_equal(pred: str, gold: str) -> bool:
    """Whether the answer string `pred` equals the gold answer `gold` for DeepScaleR's grader."""
    if "\\boxed" in gold:
        boxed = last_boxed_official(gold)
        if boxed is None:
            return False
        gold = boxed
    return math_normalize(pred) == math_normalize(gold) or sympy_equal(pred, gold)


def official_verdict(response: str, golds: str | Sequence[str]) -> bool:
    """The whole official rule on one response against one gold answer or a list of forms."""
    pred, _status = official_extract(response)
    if pred is None:
        return False
    forms = [golds] if isinstance(golds, str) else list(golds)
    try:
        return any(official_equal(pred, str(gold)) for gold in forms)
    except Exception:  # noqa: BLE001 - the official evaluation counts a grader error as wrong
        return False
