"""MATH-style answer normalisation (Hendrycks et al.'s MATH dataset), as DeepScaleR's grader uses it.

Two answers are equal for this check when their normalised strings are identical. The steps,
in order: drop a `\\text{...}` wrapping the whole answer, line breaks, `\\!`, doubled
backslashes, `\\left`/`\\right`, degree marks, `\\$`, a trailing unit (`\\text{ ...}`), `\\%`;
write `.5` as `0.5`; drop a short left-hand side (`x = 3` -> `3`); brace `\\sqrt3` and
`\\frac12` (`\\sqrt{3}`, `\\frac{1}{2}`); drop spaces; `0.5` -> `\\frac{1}{2}`; `3/4` ->
`\\frac{3}{4}` for plain integers. An answer that trips a step (an empty `\\sqrt` argument,
two unit texts) is compared as it was after the `\\text{}` unwrapping, as the reference does.
"""

from __future__ import annotations

import re

_WHOLE_TEXT = re.compile(r"^\\text\{(?P<text>.+?)\}$")


class _Unnormalisable(Exception):
    """A step cannot read the answer; the caller falls back to the unwrapped answer."""


def math_normalize(answer: str) -> str:
    """The normalised form of one answer string (see the module doc)."""
    answer = answer.strip()
    match = _WHOLE_TEXT.search(answer)
    if match:
        answer = match.group("text").strip()
    try:
        return _normalise_steps(answer)
    except _Unnormalisable:
        return answer


def _normalise_steps(text: str) -> str:
    for old, new in (
        ("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
        ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
    ):
        text = text.replace(old, new)
    text = _drop_trailing_unit(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _brace_sqrt(text)
    text = text.replace(" ", "")
    text = _brace_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text)


def _drop_trailing_unit(text: str) -> str:
    """`5 \\text{ cm}` -> `5 ` (the MATH answers write units as `\\text{ unit}`)."""
    if "\\text{ " not in text:
        return text
    parts = text.split("\\text{ ")
    if len(parts) != 2:
        raise _Unnormalisable
    return parts[0]


def _brace_sqrt(text: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}` (one character); `\\sqrt{...}` stays."""
    head, *rest = text.split("\\sqrt")
    pieces = [head]
    for part in rest:
        if not part:
            raise _Unnormalisable
        pieces.append("\\sqrt" + part if part[0] == "{" else "\\sqrt{" + part[0] + "}" + part[1:])
    return "".join(pieces)


def _brace_fracs(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{7}` -> `\\frac{1}{7}`; a `\\frac` followed by fewer
    than two characters leaves the whole answer as it is."""
    head, *rest = text.split("\\frac")
    pieces = [head]
    for part in rest:
        if not part:
            raise _Unnormalisable
        if part[0] == "{":
            pieces.append("\\frac" + part)
            continue
        if len(part) < 2:
            return text
        numerator, second, tail = part[0], part[1], part[2:]
        if second == "{":
            pieces.append("\\frac{" + numerator + "}{" + tail)
        else:
            pieces.append("\\frac{" + numerator + "}{" + second + "}" + tail)
    return "".join(pieces)


def _slash_to_frac(text: str) -> str:
    """`3/4` -> `\\frac{3}{4}` when both sides are plain integers written canonically."""
    sides = text.split("/")
    if len(sides) != 2:
        return text
    try:
        numerator, denominator = int(sides[0]), int(sides[1])
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"
