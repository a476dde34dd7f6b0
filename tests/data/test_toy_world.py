"""The toy world: seeded problems, styled teachers, disjoint splits, exact steps."""

from __future__ import annotations

import ast
import itertools
import re
from collections import Counter
from fractions import Fraction

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from reasonft.config import CONF_DIR as CONF
from reasonft.data.toy import ToyWorld

RELIABLE = ("terse", "numbered", "verbose")
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def small_world(**kwargs) -> ToyWorld:
    settings = {"seed": 7, "n_train": 150, "n_test": 40}
    settings.update(kwargs)
    return ToyWorld(**settings)


# -- slow, separate references ------------------------------------------------------------------


def eval_expression(text: str) -> Fraction:
    """Exact value of an infix expression of integers with + - * / and parentheses."""
    ops = {
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b,
    }

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise AssertionError(f"unexpected node {ast.dump(node)} in {text!r}")

    return walk(ast.parse(text, mode="eval").body)


WORD_RULES = [
    (re.compile(r"(?:has|starts with) (\d+) "), None),
    (re.compile(r"finds (\d+) more|gives \w+ (\d+) more"), "+"),
    (re.compile(r"gives away (\d+)|loses (\d+)"), "-"),
    (re.compile(r"becomes (\d+) times|ends up with (\d+) times"), "*"),
    (re.compile(r"into (\d+) equal groups|among (\d+) people"), "/"),
]


def solve_word_problem(text: str) -> int:
    """Recompute a word problem's answer by reading its sentences."""
    value = None
    for sentence in re.split(r"(?<=[.?]) ", text):
        for rule, op in WORD_RULES:
            match = rule.search(sentence)
            if match:
                number = int(next(g for g in match.groups() if g is not None))
                if op is None:
                    value = number
                elif op == "+":
                    value += number
                elif op == "-":
                    value -= number
                elif op == "*":
                    value *= number
                else:
                    assert value % number == 0, f"inexact division in {text!r}"
                    value //= number
                break
    assert value is not None, f"no start value in {text!r}"
    return value


def final_answer(response: str) -> int | None:
    tail = response.rsplit("</think>", 1)[-1]
    found = BOXED.findall(tail)
    return int(found[-1]) if found else None


EQUATION = re.compile(r"(-?\d+) ([-+*/]) (\d+) (?:=|is) (-?\d+)")
VERBOSE = re.compile(
    r"we add (\d+) to (\d+), .*?(-?\d+)\.|we subtract (\d+) from (\d+), .*?(-?\d+)\."
    r"|we multiply (\d+) by (\d+), .*?(-?\d+)\.|we divide (\d+) by (\d+), .*?(-?\d+)\."
)


def written_calculations(response: str, source: str) -> list[tuple[int, str, int, int]]:
    """(left, op, right, result) of every step as the teacher wrote it."""
    if source != "verbose":
        return [(int(a), op, int(b), int(r)) for a, op, b, r in EQUATION.findall(response)]
    out = []
    for groups in VERBOSE.findall(response):
        g = [int(x) if x else None for x in groups]
        if g[0] is not None:
            out.append((g[1], "+", g[0], g[2]))
        elif g[3] is not None:
            out.append((g[4], "-", g[3], g[5]))
        elif g[6] is not None:
            out.append((g[6], "*", g[7], g[8]))
        else:
            out.append((g[9], "/", g[10], g[11]))
    return out


def exact(left: int, op: str, right: int) -> Fraction:
    return eval_expression(f"{left} {op} {right}")


# -- tests --------------------------------------------------------------------------------------


def test_same_seed_same_world_and_different_seed_differs():
    a, b, c = small_world(), small_world(), small_world(seed=8)
    for split in ("train", "test"):
        assert a.problems(split).to_list() == b.problems(split).to_list()
        assert a.problems(split)["prompt"] != c.problems(split)["prompt"]
    assert a.teacher_pool().to_list() == b.teacher_pool().to_list()
    assert a.teacher_pool()["response"] != c.teacher_pool()["response"]


def test_columns_ids_and_difficulty():
    world = small_world(min_ops=2, max_ops=4)
    problems = world.problems("train")
    assert problems.column_names == ["prompt_id", "prompt", "answer"]
    assert len(set(problems["prompt_id"])) == len(problems) == 150
    assert problems[17]["prompt_id"] == "train-00017"
    pool = world.teacher_pool()
    assert pool.column_names == ["prompt_id", "prompt", "answer", "response", "source", "steps"]
    assert len(pool) == 150 * 4
    for problem in world.problem_list("train"):
        assert 2 <= problem.difficulty <= 4


def test_answers_match_a_separate_evaluation_and_stay_in_range():
    world = small_world(max_value=60, max_operand=12, word_fraction=0.5)
    problems = world.problem_list("train") + world.problem_list("test")
    assert any(p.is_word_problem for p in problems) and not all(p.is_word_problem for p in problems)
    for problem in problems:
        assert eval_expression(problem.expression) == problem.answer
        if problem.is_word_problem:
            assert solve_word_problem(problem.text) == problem.answer
        else:
            assert problem.expression in problem.text
        for calc in problem.calculations():
            assert 0 <= calc.left <= 60 and 1 <= calc.right <= 12 and 0 <= calc.result <= 60
            assert exact(calc.left, calc.op, calc.right) == calc.result


def test_reliable_teachers_are_right_at_every_step():
    world = small_world(teachers=list(RELIABLE), responses_per_teacher=2)
    expressions = {p.prompt_id: p.expression for p in world.problem_list("train")}
    pool = world.teacher_pool()
    assert len(pool) == 150 * 3 * 2
    responses = {}
    for record in pool:
        truth = eval_expression(expressions[record["prompt_id"]])
        assert final_answer(record["response"]) == truth == int(record["answer"])
        calcs = written_calculations(record["response"], record["source"])
        assert calcs, record["response"]
        for left, op, right, result in calcs:
            assert exact(left, op, right) == result, record["response"]
        responses.setdefault((record["prompt_id"], record["source"]), []).append(record["response"])
    # several responses per teacher vary in wording for at least some prompts
    assert any(len(set(r)) > 1 for r in responses.values())


def test_sloppy_teacher_is_wrong_at_its_slip_rate_and_slips_propagate():
    world = ToyWorld(seed=3, n_train=1000, n_test=10, teachers=["sloppy"], slip_rate=0.3)
    expressions = {p.prompt_id: p.expression for p in world.problem_list("train")}
    wrong = 0
    for record in world.teacher_pool():
        truth = eval_expression(expressions[record["prompt_id"]])
        answer = final_answer(record["response"])
        calcs = written_calculations(record["response"], "sloppy")
        # each step works on the previous step's (possibly wrong) result; the box holds the last
        assert answer == calcs[-1][3]
        for previous, current in itertools.pairwise(calcs):
            assert previous[3] == current[0]
        wrong += answer != truth
    assert 0.25 <= wrong / 1000 <= 0.35  # binomial sd ~0.0145 at n=1000
    never = ToyWorld(seed=3, n_train=200, n_test=10, teachers=["sloppy"], slip_rate=0.0)
    always = ToyWorld(seed=3, n_train=200, n_test=10, teachers=["sloppy"], slip_rate=1.0)
    assert all(final_answer(r["response"]) == int(r["answer"]) for r in never.teacher_pool())
    assert all(final_answer(r["response"]) != int(r["answer"]) for r in always.teacher_pool())


def test_steps_are_the_paragraphs_and_concatenate_to_the_response():
    for record in small_world(responses_per_teacher=2).teacher_pool():
        response, steps = record["response"], record["steps"]
        assert "".join(steps) == response
        assert steps == re.split(r"(?<=\n\n)", response)  # reference paragraph split
        assert response.startswith("<think>\n") and steps[0].startswith("<think>\n")
        assert "\n</think>\n" in steps[-1] and BOXED.search(steps[-1])
        assert all("</think>" not in s and s.endswith("\n\n") for s in steps[:-1])


def test_splits_are_disjoint_and_test_does_not_depend_on_n_train():
    world = ToyWorld(seed=1, n_train=800, n_test=200, min_ops=1, max_ops=2)
    train, test = world.problem_list("train"), world.problem_list("test")
    pretrain = world.pretrain_problems(500)
    assert not {p.text for p in train} & {p.text for p in test}
    expressions = [p.expression for p in train + test]
    assert len(set(expressions)) == len(expressions)
    assert not {p.expression for p in pretrain} & {p.expression for p in test}
    other = ToyWorld(seed=1, n_train=50, n_test=200, min_ops=1, max_ops=2)
    assert other.problems("test").to_list() == world.problems("test").to_list()
    assert world.pretrain_problems(100) == pretrain[:100]


def test_pretraining_without_an_operator_never_uses_it():
    world = ToyWorld(seed=1, n_train=300, n_test=200)
    test_expressions = {p.expression for p in world.problem_list("test")}
    every = world.pretrain_problems(400)
    no_times = world.pretrain_problems(2000, operators=("+", "-", "/"))
    for problem in no_times:
        assert "*" not in problem.expression and "times" not in problem.text
        assert eval_expression(problem.expression) == problem.answer
        assert problem.expression not in test_expressions
        for calc in problem.calculations():
            assert 0 <= calc.left <= 20 and 0 <= calc.result <= 20
    # every other operator still shows up, at every difficulty
    used = Counter(o.op for p in no_times for o in p.operations)
    assert set(used) == {"+", "-", "/"} and min(used.values()) > 200
    assert {p.difficulty for p in no_times} == {1, 2, 3}
    # the full operator set is the world's one stream, unaffected by the restricted one
    assert world.pretrain_problems(400) == every
    assert world.pretrain_problems(400, operators=("+", "-", "*", "/")) == every
    again = ToyWorld(seed=1, n_train=300, n_test=200)
    assert again.pretrain_problems(300, operators=("/", "-", "+")) == no_times[:300]
    assert any("*" in p.expression for p in every)
    with pytest.raises(ValueError, match=r"include \+ and -"):
        world.pretrain_problems(10, operators=("+", "*"))
    with pytest.raises(ValueError, match="distinct operators"):
        world.pretrain_problems(10, operators=("+", "-", "+"))


def test_a_multiplier_cap_keeps_only_doublings():
    world = ToyWorld(seed=1, n_train=300, n_test=200)
    every = world.pretrain_problems(400)
    doublings = world.pretrain_problems(2000, max_multiplier=2)
    times = [o for p in doublings for o in p.operations if o.op == "*"]
    assert len(times) > 200 and {o.operand for o in times} == {2}
    for problem in doublings:
        assert eval_expression(problem.expression) == problem.answer
    uncapped = Counter(o.operand for p in every for o in p.operations if o.op == "*")
    assert max(uncapped) > 2  # the cap is what removes the larger multipliers
    # its own stream: the uncapped one is unchanged, and the cap combines with an operator set
    assert world.pretrain_problems(400) == every
    assert ToyWorld(seed=1, n_train=300, n_test=200).pretrain_problems(
        300, max_multiplier=2
    ) == doublings[:300]
    # the test split still needs the rest of the times table: the skill the student lacks
    assert any(
        o.op == "*" and o.operand > 2 for p in world.problem_list("test") for o in p.operations
    )
    with pytest.raises(ValueError, match="max_multiplier=12 must lie in 2..max_operand"):
        world.pretrain_problems(10, max_multiplier=12)


def test_corpus_and_describe():
    world = small_world()
    corpus = world.corpus()
    assert len(corpus) == 150 * 5 and all(isinstance(t, str) and t for t in corpus)
    summary = world.describe()
    train = summary["splits"]["train"]
    assert train["problems"] == 150 and train["pool_records"] == 600
    assert sum(train["by_difficulty"].values()) == 150
    assert train["wrong_responses_by_teacher"]["terse"] == 0
    assert train["wrong_responses_by_teacher"]["sloppy"] > 0
    assert summary["splits"]["test"]["problems"] == 40


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown toy teacher 'oracle'"):
        ToyWorld(teachers=["terse", "oracle"])
    with pytest.raises(ValueError, match="min_ops <= max_ops"):
        ToyWorld(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        small_world().problems("dev")
    with pytest.raises(ValueError, match="max_operand=1 must lie in 2..max_value"):
        ToyWorld(max_operand=1)
    with pytest.raises(ValueError, match="slip_rate"):
        ToyWorld(slip_rate=1.5)


def test_data_config_instantiates_the_world():
    cfg = OmegaConf.load(CONF / "data" / "toy.yaml")
    assert cfg.name == "toy" and cfg.chat_template is True and cfg.overlength == "drop"
    cfg.source.n_train, cfg.source.n_test = 30, 10
    world = instantiate(cfg.source)
    assert isinstance(world, ToyWorld)
    assert world.settings()["teachers"] == list(cfg.source.teachers)
    assert len(world.problems("train")) == 30 and len(world.teacher_pool()) == 30 * 4


def test_warmup_split_is_apart_from_train_and_test_and_leaves_the_default_world_as_it_was():
    from reasonft.data.toy import ToyWorld

    default = ToyWorld(n_train=300, n_test=50)
    warm = ToyWorld(n_train=300, n_test=50, train_split="warmup")
    expressions = {s: {p.expression for p in default.problem_list(s)} for s in ("train", "test")}
    warm_train = warm.problem_list("train")
    assert len(warm_train) == 300 and all(p.prompt_id.startswith("warmup-") for p in warm_train)
    assert not {p.expression for p in warm_train} & (expressions["train"] | expressions["test"])
    assert [p.expression for p in warm.problem_list("test")] == [
        p.expression for p in default.problem_list("test")
    ]
    assert "train_split" not in default.settings() and warm.settings()["train_split"] == "warmup"
    with pytest.raises(ValueError, match="train_split='dev'"):
        ToyWorld(train_split="dev")
