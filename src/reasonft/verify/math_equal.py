"""math-verify's equivalence of two answer strings (METHODS.md §3), the default `verify_fn`.

Both strings are read as inline LaTeX (`$...$`), which also accepts plain forms like `1/2`.
"""

from __future__ import annotations

import functools
from typing import Any


class GoldAnswerError(ValueError):
    """math-verify found nothing to compare in a gold answer."""


class _NothingParsed(Exception):
    """Raised inside the cache so that failed parses are not remembered."""


def _strip_math_delimiters(text: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` -> `x` (answers are wrapped once, below)."""
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : -len(right)]
            if "$" not in inner and left not in inner:
                return inner.strip()
    return text


@functools.lru_cache(maxsize=8192)
def _parse_answer(text: str, timeout_s: int | None) -> tuple[Any, ...]:
    """math-verify's reading of one answer string; cached, since many samples share a gold
    answer (and often a predicted one)."""
    from math_verify import parse

    parsed = parse(f"${_strip_math_delimiters(text)}$", parsing_timeout=timeout_s)
    if not parsed:
        raise _NothingParsed
    return tuple(parsed)


def math_equal(pred: str, gold: str, timeout_s: int | None = None) -> bool:
    """Whether the answer `pred` equals `gold` for math-verify (both answer strings, not responses).

    `timeout_s` is math-verify's own per-call limit (SIGALRM, main thread only); None leaves the
    limit to the caller (the Verifier's worker pool).
    """
    from math_verify import verify

    try:
        gold_parsed = _parse_answer(gold, timeout_s)
    except _NothingParsed:
        raise GoldAnswerError(f"math-verify cannot read the gold answer {gold!r}") from None
    try:
        pred_parsed = _parse_answer(pred, timeout_s)
    except _NothingParsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout_s))
