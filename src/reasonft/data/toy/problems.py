"""Seeded arithmetic problems with integer answers: the toy world's questions.

A problem is a chain of single operations on a running value: start from a number, then apply
`difficulty` operations, each one `value op n`. The text reads in the order the steps are taken
(`(12 - 5) * 3 + 4`). Intermediate results stay in `0..max_value`, operands are small
(`n <= max_operand`), and division is used only when exact, so a tiny transformer can learn
each single-operation step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

OPERATORS = ("+", "-", "*", "/")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}

EXPRESSION_TEMPLATES = ("Compute {e}.", "What is {e}?", "Evaluate {e}.", "Calculate {e}.")
NAMES = ("Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max")
ITEMS = ("apples", "marbles", "stickers", "coins", "cards", "shells")
WORD_START = ("{name} has {a} {items}.", "{name} starts with {a} {items}.")
WORD_OPERATIONS = {
    "+": ("{name} finds {b} more.", "A friend gives {name} {b} more."),
    "-": ("{name} gives away {b}.", "{name} loses {b}."),
    "*": (
        "Then the number of {items} becomes {b} times as large.",
        "{name} ends up with {b} times as many.",
    ),
    "/": (
        "{name} splits them into {b} equal groups and keeps one group.",
        "{name} shares them equally among {b} people, keeping one share.",
    ),
}
WORD_QUESTION = "How many {items} does {name} have now?"


def apply(op: str, left: int, right: int) -> int:
    """`left op right` on integers; division must be exact."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        if right == 0 or left % right:
            raise ValueError(f"{left} / {right} is not an exact integer division")
        return left // right
    raise ValueError(f"unknown operator {op!r}; use one of {OPERATORS}")


@dataclass(frozen=True)
class Operation:
    """One step of a problem: `running value op operand`."""

    op: str
    operand: int


@dataclass(frozen=True)
class Calculation:
    """One worked step: `left op right = result`."""

    left: int
    op: str
    right: int
    result: int


@dataclass(frozen=True)
class Problem:
    """A toy problem: its text, a clean expression form of it, and its answer."""

    prompt_id: str
    text: str
    expression: str
    start: int
    operations: tuple[Operation, ...]
    answer: int
    is_word_problem: bool

    @property
    def difficulty(self) -> int:
        return len(self.operations)

    def calculations(self) -> list[Calculation]:
        """The correct single-operation steps, in order."""
        value, steps = self.start, []
        for operation in self.operations:
            result = apply(operation.op, value, operation.operand)
            steps.append(Calculation(value, operation.op, operation.operand, result))
            value = result
        return steps


@dataclass(frozen=True)
class ProblemShape:
    """How problems are drawn.

    Operations per problem lie in `min_ops..max_ops`; the start value and every intermediate
    result in `0..max_value`; each operand (the number combined with the running value) in
    `1..max_operand` (`2..max_operand` for * and /), so each step is a small table fact.
    Each step's operator is drawn from the feasible ones among `operators`, which must hold
    + and - (one of the two is always feasible, so a draw never gets stuck). `max_multiplier`
    (None: `max_operand`) caps the operand of *: with 2, the only products are doublings.
    """

    min_ops: int = 1
    max_ops: int = 3
    max_value: int = 20
    max_operand: int = 9
    word_fraction: float = 0.2
    operators: tuple[str, ...] = OPERATORS
    max_multiplier: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(
                f"toy world: need 1 <= min_ops <= max_ops, got min_ops={self.min_ops}, "
                f"max_ops={self.max_ops}"
            )
        if self.max_value < 10:
            raise ValueError(f"toy world: max_value={self.max_value} is too small; use >= 10")
        if not 2 <= self.max_operand <= self.max_value:
            raise ValueError(
                f"toy world: max_operand={self.max_operand} must lie in 2..max_value "
                f"({self.max_value})"
            )
        if not 0.0 <= self.word_fraction <= 1.0:
            raise ValueError(f"toy world: word_fraction={self.word_fraction} must lie in [0, 1]")
        unknown = [op for op in self.operators if op not in OPERATORS]
        if (
            unknown
            or not {"+", "-"} <= set(self.operators)
            or len(set(self.operators)) < len(self.operators)
        ):
            raise ValueError(
                f"toy world: operators={list(self.operators)} must be distinct operators from "
                f"{list(OPERATORS)} and include + and -"
            )
        if self.max_multiplier is not None and not 2 <= self.max_multiplier <= self.max_operand:
            raise ValueError(
                f"toy world: max_multiplier={self.max_multiplier} must lie in 2..max_operand "
                f"({self.max_operand})"
            )

    def operand_choices(self, op: str, value: int) -> range | list[int]:
        """The operands `op` may take with the running value `value` (empty: not possible)."""
        top = self.max_operand
        if op == "+":
            return range(1, min(top, self.max_value - value) + 1)
        if op == "-":
            return range(1, min(top, value) + 1)
        if op == "*":
            top = min(top, self.max_multiplier or top)
            return range(2, min(top, self.max_value // value) + 1) if value >= 1 else range(0)
        return [d for d in range(2, min(top, value) + 1) if value % d == 0]


def _wrap(text: str, precedence: int, needed: int) -> str:
    return f"({text})" if precedence < needed else text


def render_expression(start: int, operations: tuple[Operation, ...]) -> str:
    """Infix text with only the parentheses the evaluation order needs."""
    text, precedence = str(start), max(_PRECEDENCE.values())
    for operation in operations:
        own = _PRECEDENCE[operation.op]
        text = f"{_wrap(text, precedence, own)} {operation.op} {operation.operand}"
        precedence = own
    return text


def _word_text(start: int, operations: tuple[Operation, ...], rng: random.Random) -> str:
    fill = {"name": rng.choice(NAMES), "items": rng.choice(ITEMS)}
    sentences = [rng.choice(WORD_START).format(a=start, **fill)]
    for operation in operations:
        sentences.append(
            rng.choice(WORD_OPERATIONS[operation.op]).format(b=operation.operand, **fill)
        )
    sentences.append(WORD_QUESTION.format(**fill))
    return " ".join(sentences)


def draw_problem(rng: random.Random, prompt_id: str, shape: ProblemShape) -> Problem:
    """One random problem within `shape`."""
    n_ops = rng.randint(shape.min_ops, shape.max_ops)
    is_word = rng.random() < shape.word_fraction
    value = rng.randint(2, shape.max_value)
    start = value
    operations: list[Operation] = []
    for _ in range(n_ops):
        feasible = [op for op in shape.operators if shape.operand_choices(op, value)]
        op = rng.choice(feasible)
        operand = rng.choice(shape.operand_choices(op, value))
        value = apply(op, value, operand)
        operations.append(Operation(op, operand))
    ops = tuple(operations)
    expression = render_expression(start, ops)
    if is_word:
        text = _word_text(start, ops, rng)
    else:
        text = rng.choice(EXPRESSION_TEMPLATES).format(e=expression)
    return Problem(prompt_id, text, expression, start, ops, value, is_word)


def problem_stream(
    rng: random.Random,
    id_prefix: str,
    shape: ProblemShape,
    exclude: set[str],
    distinct: bool = True,
    max_attempts_per_problem: int = 1000,
) -> Iterator[Problem]:
    """Endless problems whose expression is not in `exclude`.

    With `distinct`, each yielded expression is added to `exclude`, so the stream never repeats
    itself and later streams sharing the set avoid it: deduplicating by expression keeps splits
    disjoint in substance, not only in wording.
    """
    index = 0
    while True:
        for _ in range(max_attempts_per_problem):
            problem = draw_problem(rng, f"{id_prefix}-{index:05d}", shape)
            if problem.expression not in exclude:
                break
        else:
            raise ValueError(
                f"toy world: could not draw a new distinct problem after {max_attempts_per_problem} "
                f"tries ({shape}); ask for fewer problems or widen the ranges"
            )
        if distinct:
            exclude.add(problem.expression)
        index += 1
        yield problem
