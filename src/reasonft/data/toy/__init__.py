"""The toy world: seeded arithmetic problems and styled teachers, runnable without any hub."""

from reasonft.data.toy.problems import Calculation, Operation, Problem, render_expression
from reasonft.data.toy.teachers import TEACHER_STYLES, Solution, Teacher, make_teacher
from reasonft.data.toy.world import ToyWorld

__all__ = [
    "TEACHER_STYLES",
    "Calculation",
    "Operation",
    "Problem",
    "Solution",
    "Teacher",
    "ToyWorld",
    "make_teacher",
    "render_expression",
]
