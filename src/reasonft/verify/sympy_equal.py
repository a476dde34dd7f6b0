"""The sympy half of DeepScaleR's grader: a looser normalisation, then element-wise sympy equality.

Normalisation (`sympy_normalize`): drop a whole-answer `\\text{}`, `$` and `%`; read ` or ` /
` and ` as commas; million/billion/trillion as powers of ten; drop common unit words and degree
marks, one pair of outer braces and `,\\!` thousands separators; write integral floats as
integers; turn remaining LaTeX into plain text (pylatexenc; `\\frac{a}{b}` -> `a/b`, `\\sqrt`
-> `sqrt`, `\\pi` -> `pi`); `7 3/4` -> `7+3/4`; drop spaces and braces; lower-case; integers
lose their thousands commas.

Equality (`sympy_equal`): identical normal forms are equal; otherwise both are split into
tuple/interval elements (`(1,2]` -> `1`, `2`, brackets compared as characters) and every pair
must agree: two plain fractions only when written identically (unreduced fractions do not
match reduced ones), an integer never matches a non-integer, and anything else when sympy
simplifies `(gold) - (pred)` to 0. Expressions with more than two unknown letters or with
large or nested exponents are not handed to sympy (it can hang there) and count as unequal.
"""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache

_WHOLE_TEXT = re.compile(r"^\\text\{(?P<text>.+?)\}$")
_UNITS = (
    "degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
    "month", "year", "foot", "feet", "inch", "yard",
)
_UNIT_PATTERNS = [re.compile(unit + r"(es)?(s)? *(\^[0-9]+)?") for unit in _UNITS]
_DEGREE = re.compile(r"\^ *\\circ")
_THOUSANDS_THIN_SPACE = re.compile(r",\\! *")
_MINUS_SPACE = re.compile(r"- *")
_MIXED_NUMBER = re.compile(r"([0-9]) +([0-9])")
_THOUSANDS_COMMA = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_PLAIN_FRACTION = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_RISKY_SUBSTRINGS = ("^{", "^(")
_RISKY_PATTERNS = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
_BRACKETS = "()[]"
_UNICODE_TO_SYMPY = (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*"))


def sympy_normalize(expr: str) -> str:
    """The normal form compared (and handed to sympy) by `sympy_equal`."""
    match = _WHOLE_TEXT.search(expr)
    if match:
        expr = match.group("text")
    for old, new in (
        ("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "), (" and ", " , "),
        ("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12"),
    ):
        expr = expr.replace(old, new)
    for pattern in _UNIT_PATTERNS:
        expr = pattern.sub("", expr)
    expr = _DEGREE.sub("", expr)
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = _THOUSANDS_THIN_SPACE.sub("", expr)
    if _is_float(expr) and _is_integral(float(expr)):
        expr = str(round(float(expr)))
    if "\\" in expr:
        with contextlib.suppress(Exception):  # unreadable LaTeX is compared as written
            expr = _latex_to_text(expr)
    expr = _MINUS_SPACE.sub("-", expr)
    expr = _MIXED_NUMBER.sub(r"\1+\2", expr)
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _is_integer_string(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def sympy_equal(pred: str, gold: str) -> bool:
    """Whether `pred` equals `gold` under the normalisation and element-wise check above."""
    gold_norm, pred_norm = sympy_normalize(gold), sympy_normalize(pred)
    if gold_norm == pred_norm:
        return True
    if not pred_norm:
        return False
    gold_elems, pred_elems = _tuple_elements(gold_norm), _tuple_elements(pred_norm)
    if len(gold_elems) > 1 and (gold_norm[0] != pred_norm[0] or gold_norm[-1] != pred_norm[-1]):
        return False
    if len(gold_elems) != len(pred_elems):
        return False
    return all(_elements_equal(g, p) for g, p in zip(gold_elems, pred_elems))


def _elements_equal(gold: str, pred: str) -> bool:
    if _PLAIN_FRACTION.search(gold) and _PLAIN_FRACTION.search(pred):
        return gold == pred
    if _is_integer_string(gold) != _is_integer_string(pred):
        return False
    return _sympy_difference_is_zero(gold, pred)


def _sympy_difference_is_zero(gold: str, pred: str) -> bool:
    expr = f"({gold})-({pred})"
    if not _safe_for_sympy(expr):
        return False
    try:
        import sympy

        return sympy.simplify(_parse(expr)) == 0
    except Exception:  # noqa: BLE001 - sympy's parse/simplify errors mean "not shown equal"
        return False


def _parse(expr: str):
    from sympy.parsing import sympy_parser

    transformations = sympy_parser.standard_transformations + (
        sympy_parser.implicit_multiplication_application,
    )
    return sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations)


def _safe_for_sympy(expr: str) -> bool:
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2:
        return False
    if any(s in expr for s in _RISKY_SUBSTRINGS):
        return False
    return not any(p.search(expr) for p in _RISKY_PATTERNS)


@lru_cache(maxsize=1)
def _latex_converter():
    from pylatexenc.latex2text import LatexNodes2Text

    return LatexNodes2Text()


def _latex_to_text(expr: str) -> str:
    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    expr = expr.replace("\\frac", " \\frac")  # a mixed number `3\frac12` stays two numbers
    expr = _latex_converter().latex_to_text(expr)
    for old, new in _UNICODE_TO_SYMPY:
        expr = expr.replace(old, new)
    return expr.strip()


def _tuple_elements(expr: str) -> list[str]:
    """`(1,2]` -> ["1", "2"]; anything not a flat bracketed list -> [expr]; "" -> []."""
    expr = _drop_thousands_commas(expr)
    if not expr:
        return []
    inner = expr[1:-1]
    if len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS and not any(
        c in inner for c in _BRACKETS
    ):
        return [elem.strip() for elem in inner.split(",")]
    return [expr]


def _drop_thousands_commas(expr: str) -> str:
    while True:
        replaced = _THOUSANDS_COMMA.sub(r"\1\3\4", expr)
        if replaced == expr:
            return expr
        expr = replaced


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_integral(value: float) -> bool:
    try:
        return abs(value - round(value)) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _is_integer_string(text: str) -> bool:
    try:
        value = float(_drop_thousands_commas(text))
    except ValueError:
        return False
    return _is_integral(value)
