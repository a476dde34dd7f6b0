"""Teacher solvers with different step styles, writing R1-like traces.

A response is `"<think>\\n" + paragraphs joined by "\\n\\n" + "\\n</think>\\n" + summary`, where
the summary ends with `\\boxed{N}`. `steps` are the paragraphs as contiguous pieces of the
response (each keeps its trailing blank line; the first holds `<think>`, the last holds
`</think>` and the summary), so `"".join(steps) == response`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

from reasonft.data.toy.problems import Calculation, Problem, apply

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n"
PARAGRAPH_BREAK = "\n\n"

_VERBS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}


@dataclass(frozen=True)
class Solution:
    response: str
    steps: list[str]
    final_answer: int


def assemble(paragraphs: list[str], summary: str) -> tuple[str, list[str]]:
    """Join paragraphs into a think block + summary; return (response, steps)."""
    if not paragraphs:
        raise ValueError("a response needs at least one reasoning paragraph")
    for paragraph in paragraphs:
        if PARAGRAPH_BREAK in paragraph or not paragraph.strip():
            raise ValueError(f"paragraph {paragraph!r} is empty or contains a blank line")
    steps = []
    last = len(paragraphs) - 1
    for i, paragraph in enumerate(paragraphs):
        piece = (THINK_OPEN if i == 0 else "") + paragraph
        piece += PARAGRAPH_BREAK if i < last else THINK_CLOSE + summary
        steps.append(piece)
    return "".join(steps), steps


class Teacher(ABC):
    """A correct solver; subclasses choose how a step and the summary are written."""

    name = "teacher"
    reliable = True

    def calculations(self, problem: Problem, rng: random.Random) -> list[Calculation]:
        return problem.calculations()

    @abstractmethod
    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        """The reasoning paragraphs (no blank lines inside)."""

    @abstractmethod
    def summary(self, answer: int, rng: random.Random) -> str:
        """The text after `</think>`, ending with `\\boxed{answer}`."""

    def solve(self, problem: Problem, rng: random.Random) -> Solution:
        calculations = self.calculations(problem, rng)
        answer = calculations[-1].result
        response, steps = assemble(
            self.paragraphs(problem, calculations, rng), self.summary(answer, rng)
        )
        return Solution(response, steps, answer)


class TerseTeacher(Teacher):
    """Bare equations: `12 - 5 = 7`."""

    name = "terse"

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        return [f"{c.left} {c.op} {c.right} = {c.result}" for c in calculations]

    def summary(self, answer: int, rng: random.Random) -> str:
        return rng.choice(("Answer: ", "Result: ", "")) + f"\\boxed{{{answer}}}"


class NumberedTeacher(Teacher):
    """Numbered equations: `Step 1: 12 - 5 = 7`."""

    name = "numbered"

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        tail = rng.choice(("", "."))
        return [
            f"Step {i}: {c.left} {c.op} {c.right} = {c.result}{tail}"
            for i, c in enumerate(calculations, start=1)
        ]

    def summary(self, answer: int, rng: random.Random) -> str:
        return rng.choice(("The answer is ", "Final answer: ")) + f"\\boxed{{{answer}}}"


class VerboseTeacher(Teacher):
    """Prose: `First, we subtract 5 from 12, which gives 7.`"""

    name = "verbose"

    _INTROS = (
        "Let me work through this one operation at a time.",
        "We need to carry out the operations in order.",
        "Let's solve this carefully, step by step.",
    )
    _RESULTS = ("which gives {r}", "and we get {r}", "so the value is now {r}")

    @staticmethod
    def _clause(c: Calculation) -> str:
        if c.op == "+":
            return f"we add {c.right} to {c.left}"
        if c.op == "-":
            return f"we subtract {c.right} from {c.left}"
        return f"we {_VERBS[c.op]} {c.left} by {c.right}"

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        out = [rng.choice(self._INTROS)]
        last = len(calculations) - 1
        for i, c in enumerate(calculations):
            lead = "First" if i == 0 else ("Finally" if i == last else "Next")
            if last == 0:
                lead = "So"
            result = rng.choice(self._RESULTS).format(r=c.result)
            out.append(f"{lead}, {self._clause(c)}, {result}.")
        return out

    def summary(self, answer: int, rng: random.Random) -> str:
        return f"So the final result is {answer}.\nThe answer is \\boxed{{{answer}}}"


class SloppyTeacher(Teacher):
    """Hurried notes (`12 - 5 is 7`) with an arithmetic slip in a `slip_rate` share of responses.

    The slip changes one step's result; later steps compute from the wrong value, so the final
    answer is wrong (if propagation happens to cancel the error, the last result slips too).
    """

    name = "sloppy"
    reliable = False

    def __init__(self, slip_rate: float) -> None:
        if not 0.0 <= slip_rate <= 1.0:
            raise ValueError(f"slip_rate={slip_rate} must lie in [0, 1]")
        self.slip_rate = slip_rate

    @staticmethod
    def _slipped(value: int, rng: random.Random) -> int:
        delta = rng.choice((-3, -2, -1, 1, 2, 3))
        return value + delta if value + delta >= 0 else value - delta

    def calculations(self, problem: Problem, rng: random.Random) -> list[Calculation]:
        correct = problem.calculations()
        if rng.random() >= self.slip_rate:
            return correct
        slip_at = rng.randrange(len(correct))
        out: list[Calculation] = []
        value = problem.start
        for i, operation in enumerate(problem.operations):
            left, right = value, operation.operand
            if operation.op == "/":
                result = left // right  # a sloppy writer floors a division that is no longer exact
            else:
                result = apply(operation.op, left, right)
            if i == slip_at:
                result = self._slipped(result, rng)
            out.append(Calculation(left, operation.op, right, result))
            value = result
        if value == problem.answer:
            last = out[-1]
            out[-1] = Calculation(last.left, last.op, last.right, self._slipped(last.result, rng))
        return out

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        return [f"{c.left} {c.op} {c.right} is {c.result}" for c in calculations]

    def summary(self, answer: int, rng: random.Random) -> str:
        return f"So \\boxed{{{answer}}}"


class RitualTeacher(Teacher):
    """Self-conditioned and locally unjustified (the failure mode of a global score, METHODS §2).

    A fixed ritual, the same in every response: each new value is announced bare first (`So the
    value is now 21.`: no operands, nothing in the text before it justifies the number), then the
    operation is restated in fluent prose that repeats the value just announced. The restatements
    are long and predictable (from the student's own familiar prose and from the value they
    repeat), so they dominate a token average (GALP); a step average (LALP) weighs every bare
    announcement as much as a restatement.
    """

    name = "ritual"

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        out = ["Let me work through this one operation at a time."]
        last = len(calculations) - 1
        for i, c in enumerate(calculations):
            lead = "First" if i == 0 else ("Finally" if i == last else "Next")
            out.append(f"So the value is now {c.result}.")
            out.append(f"{lead}, {VerboseTeacher._clause(c)}, which gives {c.result}.")
        return out

    def summary(self, answer: int, rng: random.Random) -> str:
        return f"So the final result is {answer}.\nThe answer is \\boxed{{{answer}}}"


# How the leap teacher joins a second operation onto a sentence: "..., and multiply by 3".
_SECOND_OPERATION = {"+": "add {r}", "-": "subtract {r}", "*": "multiply by {r}", "/": "divide by {r}"}


class LeapTeacher(Teacher):
    """Fluent prose that leaps: two operations per sentence, only the second result written.

    It writes the verbose teacher's familiar sentences (so most of its tokens are predictable),
    but `First, we divide 2 by 2 and multiply by 9, which gives 9.` skips the intermediate value,
    so the number a step ends on is not justified by anything written before it.
    """

    name = "leap"

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        out = [rng.choice(VerboseTeacher._INTROS)]
        pairs = [calculations[i : i + 2] for i in range(0, len(calculations), 2)]
        last = len(pairs) - 1
        for i, pair in enumerate(pairs):
            if last == 0:
                lead = "So"
            else:
                lead = "First" if i == 0 else ("Finally" if i == last else "Next")
            clause = VerboseTeacher._clause(pair[0])
            if len(pair) == 2:
                clause += " and " + _SECOND_OPERATION[pair[1].op].format(r=pair[1].right)
            out.append(f"{lead}, {clause}, which gives {pair[-1].result}.")
        return out

    def summary(self, answer: int, rng: random.Random) -> str:
        return f"So the final result is {answer}.\nThe answer is \\boxed{{{answer}}}"


class MixedTeacher(Teacher):
    """Locally justified, globally less fluent: every step shows its operands and result, but
    each step is written in a style drawn afresh (bare equation, numbered equation or prose), so
    no style carries over from one step to the next for the reader to condition on."""

    name = "mixed"

    def paragraphs(
        self, problem: Problem, calculations: list[Calculation], rng: random.Random
    ) -> list[str]:
        out = []
        last = len(calculations) - 1
        for i, c in enumerate(calculations):
            style = rng.choice(("terse", "numbered", "verbose"))
            if style == "terse":
                out.append(_equation(c))
            elif style == "numbered":
                out.append(f"Step {i + 1}: {_equation(c)}")
            else:
                lead = "First" if i == 0 else ("Finally" if i == last else "Next")
                out.append(f"{lead}, {VerboseTeacher._clause(c)}, which gives {c.result}.")
        return out

    def summary(self, answer: int, rng: random.Random) -> str:
        lead = rng.choice(("Answer: ", "The answer is ", "Final answer: "))
        return f"{lead}\\boxed{{{answer}}}"


def _equation(c: Calculation) -> str:
    return f"{c.left} {c.op} {c.right} = {c.result}"


# The styles the toy student's tokenizer and pre-training know (ToyWorld.corpus, style_mix).
TEACHER_STYLES = ("terse", "numbered", "verbose", "sloppy")
# Teachers the student has never seen, for the LALP pool (data=toy_lalp): not in the tokenizer
# corpus, so adding one changes no existing student.
LALP_TEACHER_STYLES = ("ritual", "leap", "mixed")
TEACHERS = TEACHER_STYLES + LALP_TEACHER_STYLES


def make_teacher(name: str, slip_rate: float = 0.3) -> Teacher:
    """The toy teacher called `name` (one of TEACHERS)."""
    if name == "terse":
        return TerseTeacher()
    if name == "numbered":
        return NumberedTeacher()
    if name == "verbose":
        return VerboseTeacher()
    if name == "sloppy":
        return SloppyTeacher(slip_rate)
    if name == "ritual":
        return RitualTeacher()
    if name == "leap":
        return LeapTeacher()
    if name == "mixed":
        return MixedTeacher()
    raise ValueError(f"unknown toy teacher {name!r}; choose from {list(TEACHERS)}")
