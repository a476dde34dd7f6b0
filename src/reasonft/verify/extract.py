"""Read the final answer out of a response (METHODS.md §3), by this project's rule or the official one.

The answer is the content of the last `\\boxed{...}` in the text after the last `</think>`
(the whole response when there is no `</think>`). Braces nest (`\\boxed{\\frac{1}{2}}`); escaped
braces `\\{ \\}` are literal text and do not count. Also read, because models write them:
`\\fbox{...}` and the brace-less `\\boxed 5` (the answer then runs to the next space or `$`, as
in the MATH dataset's reference code). A last box that never closes (a truncated response)
gives no answer rather than an earlier box.

`last_boxed_official` reads a box as DeepScaleR's grader does (the official OXA evaluation,
`verify.official`): the last `\\boxed` in the text, its braces counted as written (escaped
ones too), and only the `\\boxed{...}` form.
"""

from __future__ import annotations

import re

THINK_END = "</think>"
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def answer_region(response: str) -> str:
    """The text after the last `</think>`, or the whole response when there is none."""
    cut = response.rfind(THINK_END)
    return response if cut < 0 else response[cut + len(THINK_END) :]


def extract_answer(response: str) -> str | None:
    """The last boxed answer after `</think>`, stripped; None when there is none (or it is empty)."""
    region = answer_region(response)
    starts = [m.end() for m in _BOX.finditer(region)]
    if not starts:
        return None
    content = _box_content(region, starts[-1])
    if content is None:
        return None
    content = content.strip()
    return content or None


def _box_content(text: str, pos: int) -> str | None:
    """Content of the box whose command ends at `pos`: `{...}` (balanced) or ` token`."""
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        start = pos + (len(rest) - len(stripped))
        end = _matching_brace(text, start)
        return None if end is None else text[start + 1 : end]
    if rest[:1].isspace():
        token = re.match(r"[^\s$]*", stripped)
        return token.group(0) if token else None
    return None


def _matching_brace(text: str, open_pos: int) -> int | None:
    """Index of the `}` closing the `{` at `open_pos`, skipping `\\{`, `\\}` and `\\\\`."""
    depth = 0
    i = open_pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed_official(text: str) -> str | None:
    """Content of the last `\\boxed{...}` as DeepScaleR reads it; None when the last `\\boxed`
    is not followed directly by `{` or its braces never balance."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                box = text[start : end + 1]
                opening = "\\boxed{"
                return box[len(opening) : -1] if box.startswith(opening) else None
    return None
