"""ToyWorld: the embedded data source (problems + a pool of teacher responses), no hub needed.

It offers the data-source interface every source offers — `problems(split)` and
`teacher_pool(split)` returning record Datasets — plus `corpus()` for tokenizer training and
`pretrain_problems(n)` for building the toy base student on problems that are never test
problems.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import datasets

from reasonft.data.toy.problems import OPERATORS, Problem, ProblemShape, problem_stream
from reasonft.data.toy.teachers import TEACHER_STYLES, Solution, make_teacher

# Test is drawn first and train avoids its expressions, so the test split does not depend on
# n_train; pre-training problems avoid the test expressions.
SPLITS = ("train", "test")
TRAIN_SPLITS = ("train", "warmup")
# Bump when the same settings would generate different problems or responses, so that cached
# toy students built on the old content are not reused.
GENERATOR_VERSION = 2


class ToyWorld:
    """Seeded arithmetic problems (train/test, disjoint) and teachers that solve them.

    Args:
        seed: everything (problems, wording, teacher phrasing, slips) follows from it.
        n_train, n_test: problems per split.
        min_ops, max_ops: difficulty range (number of operations per problem).
        max_value: the start value and every intermediate result lie in 0..max_value.
        max_operand: each number combined with the running value lies in 1..max_operand.
        teachers: teacher names for the pool (see `TEACHER_STYLES`).
        slip_rate: share of the `sloppy` teacher's responses with an arithmetic slip.
        responses_per_teacher: responses per teacher and prompt in the pool.
        word_fraction: share of problems phrased as word problems.
        train_split: "train", or "warmup": the train split is then replaced by as many problems
            drawn apart from both splits (its own stream), for a format warm-up of a real student
            on data the experiments never use; the test split stays the same.
    """

    # Seen by the pipeline's artifact keys: records from another generator are other records.
    content_version = GENERATOR_VERSION

    def __init__(
        self,
        seed: int = 0,
        n_train: int = 1000,
        n_test: int = 200,
        min_ops: int = 1,
        max_ops: int = 3,
        max_value: int = 20,
        max_operand: int = 9,
        teachers: Sequence[str] = ("terse", "numbered", "verbose", "sloppy"),
        slip_rate: float = 0.3,
        responses_per_teacher: int = 1,
        word_fraction: float = 0.2,
        train_split: str = "train",
    ) -> None:
        self.shape = ProblemShape(
            int(min_ops), int(max_ops), int(max_value), int(max_operand), float(word_fraction)
        )
        if n_train < 1 or n_test < 1:
            raise ValueError(f"toy world: n_train={n_train} and n_test={n_test} must be >= 1")
        if responses_per_teacher < 1:
            raise ValueError(
                f"toy world: responses_per_teacher={responses_per_teacher} must be >= 1"
            )
        if train_split not in TRAIN_SPLITS:
            raise ValueError(
                f"toy world: train_split={train_split!r}; choose from {list(TRAIN_SPLITS)}"
            )
        self.train_split = str(train_split)
        self.seed = int(seed)
        self.n_train = int(n_train)
        self.n_test = int(n_test)
        self.teachers = [str(t) for t in teachers]
        self.slip_rate = float(slip_rate)
        self.responses_per_teacher = int(responses_per_teacher)
        if not self.teachers:
            raise ValueError(f"toy world: teachers is empty; choose from {list(TEACHER_STYLES)}")
        self._teachers = {name: make_teacher(name, self.slip_rate) for name in self.teachers}
        self._problems: dict[str, list[Problem]] = {}
        self._pretrain: dict[
            tuple[tuple[str, ...], int | None], tuple[list[Problem], Iterator[Problem]]
        ] = {}

    def settings(self) -> dict[str, Any]:
        """The constructor arguments: everything the world's content depends on."""
        return {
            "seed": self.seed,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "min_ops": self.shape.min_ops,
            "max_ops": self.shape.max_ops,
            "max_value": self.shape.max_value,
            "max_operand": self.shape.max_operand,
            "teachers": list(self.teachers),
            "slip_rate": self.slip_rate,
            "responses_per_teacher": self.responses_per_teacher,
            "word_fraction": self.shape.word_fraction,
            # Only when set: the default world's settings (and so its built students' folders)
            # are what they were before the warm-up split existed.
            **({"train_split": self.train_split} if self.train_split != "train" else {}),
        }

    # -- problems -------------------------------------------------------------------------------

    def _stream(
        self,
        split: str,
        exclude: set[str],
        distinct: bool = True,
        shape: ProblemShape | None = None,
        seed_name: str | None = None,
    ) -> Iterator[Problem]:
        rng = random.Random(f"reasonft-toy/{self.seed}/{seed_name or split}")
        return problem_stream(rng, split, shape or self.shape, exclude, distinct)

    def _generate_splits(self) -> None:
        if self._problems:
            return
        seen: set[str] = set()
        for split, n in (("test", self.n_test), ("train", self.n_train)):
            self._problems[split] = list(itertools.islice(self._stream(split, seen), n))
        if self.train_split == "warmup":
            warmup = self._stream("warmup", seen)
            self._problems["train"] = list(itertools.islice(warmup, self.n_train))

    def problem_list(self, split: str) -> list[Problem]:
        """The `Problem` objects of a split (with expression and operations, for checks)."""
        if split not in SPLITS:
            raise ValueError(f"toy world: unknown split {split!r}; choose from {list(SPLITS)}")
        self._generate_splits()
        return self._problems[split]

    def pretrain_problems(
        self, n: int, operators: Sequence[str] = OPERATORS, max_multiplier: int | None = None
    ) -> list[Problem]:
        """`n` problems for pre-training the base student: never a test problem.

        They are drawn afresh (not deduplicated): the space of one-operation problems is small,
        so they may repeat each other or a training problem — a student that never saw a short
        problem would not learn when to stop. `operators` (which must hold + and -) limits the
        operators they use: a student pre-trained without one has a skill to learn from the
        teachers. `max_multiplier` caps the operand of * (2: the student learns the operator
        and doublings, not the rest of the times table). Each operator set and cap draws from
        its own seeded stream; all four operators and no cap give the stream the world always
        had.
        """
        key = tuple(op for op in OPERATORS if op in operators)
        if len(key) != len(operators):
            raise ValueError(
                f"toy world: pre-training operators={list(operators)} must be distinct operators "
                f"from {list(OPERATORS)}"
            )
        cap = None if max_multiplier is None else int(max_multiplier)
        if (key, cap) not in self._pretrain:
            self._generate_splits()
            test_expressions = {p.expression for p in self._problems["test"]}
            shape = dataclasses.replace(self.shape, operators=key, max_multiplier=cap)
            seed_name = "pretrain" if key == OPERATORS else f"pretrain/{''.join(key)}"
            if cap is not None:
                seed_name += f"/x{cap}"
            stream = self._stream("pretrain", test_expressions, False, shape, seed_name)
            self._pretrain[(key, cap)] = ([], stream)
        cached, stream = self._pretrain[(key, cap)]
        if len(cached) < n:
            cached.extend(itertools.islice(stream, n - len(cached)))
        return cached[:n]

    def problems(self, split: str) -> datasets.Dataset:
        """Columns prompt_id, prompt (the problem text), answer (the integer as a string)."""
        rows = [
            {"prompt_id": p.prompt_id, "prompt": p.text, "answer": str(p.answer)}
            for p in self.problem_list(split)
        ]
        return datasets.Dataset.from_list(rows)

    # -- teacher responses ----------------------------------------------------------------------

    def solve(self, problem: Problem, teacher: str, sample_idx: int = 0) -> Solution:
        """`teacher`'s response number `sample_idx` to `problem`; the same on every call."""
        solver = self._teachers.get(teacher) or make_teacher(teacher, self.slip_rate)
        rng = random.Random(f"reasonft-toy/{self.seed}/{teacher}/{problem.prompt_id}/{sample_idx}")
        return solver.solve(problem, rng)

    def teacher_pool(self, split: str = "train") -> datasets.Dataset:
        """One record per teacher response: prompt_id, prompt, answer, response, source, steps."""
        rows = []
        for problem in self.problem_list(split):
            for teacher in self.teachers:
                for k in range(self.responses_per_teacher):
                    solution = self.solve(problem, teacher, k)
                    rows.append(
                        {
                            "prompt_id": problem.prompt_id,
                            "prompt": problem.text,
                            "answer": str(problem.answer),
                            "response": solution.response,
                            "source": teacher,
                            "steps": solution.steps,
                        }
                    )
        return datasets.Dataset.from_list(rows)

    # -- tokenizer corpus and summary -----------------------------------------------------------

    def corpus(self) -> list[str]:
        """Texts for tokenizer training: train problems and every teacher's train responses."""
        texts = []
        for problem in self.problem_list("train"):
            texts.append(problem.text)
            for teacher in TEACHER_STYLES:
                texts.append(self.solve(problem, teacher).response)
        return texts

    def describe(self) -> dict[str, Any]:
        """Counts: problems per split and difficulty, word problems, pool records per teacher."""
        out: dict[str, Any] = {"type": "toy", "settings": self.settings(), "splits": {}}
        for split in SPLITS:
            problems = self.problem_list(split)
            wrong = Counter()
            for problem in problems:
                for teacher in self.teachers:
                    for k in range(self.responses_per_teacher):
                        if self.solve(problem, teacher, k).final_answer != problem.answer:
                            wrong[teacher] += 1
            out["splits"][split] = {
                "problems": len(problems),
                "word_problems": sum(p.is_word_problem for p in problems),
                "by_difficulty": dict(sorted(Counter(p.difficulty for p in problems).items())),
                "pool_records": len(problems) * len(self.teachers) * self.responses_per_teacher,
                "wrong_responses_by_teacher": {t: wrong[t] for t in self.teachers},
            }
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"ToyWorld({args})"
