"""One response graded in this process, as the verify stage would mark it (the notebook API's
`reasonft.is_correct`); its time limit is SIGALRM's, so it holds in the main thread only."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reasonft.verify.extract import extract_answer
from reasonft.verify.graders import GRADERS
from reasonft.verify.math_equal import GoldAnswerError, math_equal


def is_correct(response: str, gold: str, timeout: float = 5.0, grader: str = "math_verify") -> bool:
    """One response, in this process, as the verify stage would mark it.

    grader="math_verify" (the default): the last boxed answer after the last `</think>` (the
    whole response without one) equals `gold` for math-verify. grader="official": the official
    OXA evaluation's rule (`reasonft.verify.official`): no `</think>` is wrong, the answer is the
    last `\\boxed{}` between the first `</think>` and the next, compared by MATH normalisation
    then sympy. grader="rl": the official RL reward's rule (`reasonft.verify.rl_reward`): no
    `</think>` is wrong, the text after the last one against the boxed gold with math-verify.

    The time limit works in the main thread only (SIGALRM), so from another thread the check
    runs without one — use the Verifier for many responses or untrusted inputs.
    """
    if grader not in GRADERS:
        raise ValueError(f"is_correct(grader={grader!r}): choose one of {list(GRADERS)}")
    in_main = threading.current_thread() is threading.main_thread()
    if grader in ("rl", "official"):
        if grader == "rl":
            from reasonft.verify.rl_reward import rl_verdict as verdict
        else:
            from reasonft.verify.official import official_verdict as verdict
        try:
            with _alarm(timeout if in_main else None):
                return verdict(response, gold)
        except _Expired:
            return False
    pred = extract_answer(response)
    if pred is None or not gold.strip():
        return False
    try:
        return math_equal(pred, gold, timeout_s=max(1, math.ceil(timeout)) if in_main else None)
    except GoldAnswerError:
        return False


class _Expired(BaseException):
    """The time limit of `is_correct`; a BaseException, so that the grader's own `except
    Exception` (sympy failures count as unequal) cannot swallow it and run on unlimited."""


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise _Expired in the main thread after `seconds` (None: no limit)."""
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Expired(f"no verdict within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
