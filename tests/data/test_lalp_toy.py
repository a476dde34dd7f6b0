"""The toy LALP study: its teachers, its configs, and the rank agreement of bench/lalp_toy.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reasonft.config import compose_config
from reasonft.data.prompts import build_prompt
from reasonft.data.toy import ToyWorld
from reasonft.data.toy.problems import Operation, Problem
from reasonft.data.toy.teachers import LALP_TEACHER_STYLES, TEACHER_STYLES, make_teacher
from reasonft.scoring.api import score

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import lalp_toy
from rank_correlation import average_ranks, kendall_tau_b, spearman

# sha256 of the existing teachers' solutions to FIXED_PLANS (see `solutions_digest`), computed
# with teachers.py as it was before the LALP teachers were added (main at 27e4ba4).
EXISTING_TEACHERS_DIGEST = "05ec7400ad81878a9ef51fe4a837007115a21afe0a2b700a10e786a010e4ada7"
FIXED_PLANS = [
    (12, [("-", 5), ("*", 2)]),
    (7, [("+", 6)]),
    (16, [("-", 4), ("/", 2), ("/", 3)]),
    (2, [("/", 2), ("*", 9), ("/", 3)]),
    (9, [("*", 2), ("-", 8), ("+", 3)]),
    (20, [("/", 5)]),
    (3, [("+", 4), ("*", 2)]),
    (15, [("-", 9), ("*", 3), ("-", 1)]),
]
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def fixed_problems() -> list[Problem]:
    """Hand-built problems (not drawn by problems.py, which may be retuned independently)."""
    out = []
    for i, (start, ops) in enumerate(FIXED_PLANS):
        value, expr = start, str(start)
        for op, n in ops:
            value = {"+": value + n, "-": value - n, "*": value * n, "/": value // n}[op]
            expr = f"({expr}) {op} {n}"
        operations = tuple(Operation(op, n) for op, n in ops)
        out.append(Problem(f"fixed-{i}", f"Compute {expr}.", expr, start, operations, value, False))
    return out


def solutions_digest(names: list[str]) -> str:
    rows = []
    for name in names:
        teacher = make_teacher(name, 0.5)
        for p in fixed_problems():
            for k in range(3):
                s = teacher.solve(p, random.Random(f"digest/{name}/{p.prompt_id}/{k}"))
                rows.append([name, p.prompt_id, k, s.response, s.steps, s.final_answer])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def intermediate_values(p: Problem) -> list[int]:
    value, out = p.start, []
    for o in p.operations:
        value = {"+": value + o.operand, "-": value - o.operand, "*": value * o.operand,
                 "/": value // o.operand}[o.op]
        out.append(value)
    return out


# -- teachers ------------------------------------------------------------------------------------


def test_existing_teachers_are_byte_identical():
    assert solutions_digest(list(TEACHER_STYLES)) == EXISTING_TEACHERS_DIGEST


def test_new_teachers_do_not_enter_the_student_corpus():
    """The tokenizer corpus (hence every existing toy student) still sees only the old styles."""
    world = ToyWorld(seed=3, n_train=20, n_test=5, teachers=["ritual", "leap", "mixed"])
    corpus = "\n".join(world.corpus())
    assert "So the value is now" not in corpus
    assert " and multiply by " not in corpus and " and divide by " not in corpus


@pytest.mark.parametrize("name", LALP_TEACHER_STYLES)
def test_new_teacher_steps_concatenate_and_answer_correctly(name):
    world = ToyWorld(seed=5, n_train=120, n_test=10, teachers=[name])
    for split in ("train", "test"):
        for p in world.problem_list(split):
            first = world.solve(p, name)
            again = world.solve(p, name)
            assert first == again
            assert "".join(first.steps) == first.response
            assert first.final_answer == p.answer
            boxed = re.findall(r"\\boxed\{(-?\d+)\}", first.response)
            assert boxed == [str(p.answer)]
            assert all(s for s in first.steps) and all("\n\n" not in s.strip() for s in first.steps)


def test_new_teachers_are_deterministic_for_a_seed_and_vary_across_seeds():
    a = ToyWorld(seed=1, n_train=60, n_test=5, teachers=["mixed", "leap"]).teacher_pool("train")
    b = ToyWorld(seed=1, n_train=60, n_test=5, teachers=["mixed", "leap"]).teacher_pool("train")
    c = ToyWorld(seed=2, n_train=60, n_test=5, teachers=["mixed", "leap"]).teacher_pool("train")
    assert a.to_list() == b.to_list()
    assert a["response"] != c["response"]


def test_ritual_announces_each_value_bare_then_restates_it():
    teacher = make_teacher("ritual")
    for p in fixed_problems():
        steps = teacher.solve(p, random.Random(0)).steps
        body = steps[1:]
        announced = [s for s in body if s.startswith("So the value is now")]
        assert [int(re.search(r"now (\d+)\.", s).group(1)) for s in announced] == (
            intermediate_values(p)
        )
        for s in announced:  # no operation written: nothing local justifies the number
            assert not re.search(r"[-+*/]|add|subtract|multiply|divide", s)
        restated = [s for s in body if not s.startswith("So the value is now")]
        assert len(restated) == len(p.operations)
        for s, value in zip(restated, intermediate_values(p)):
            assert f"which gives {value}." in s


def test_leap_skips_every_other_intermediate_value():
    teacher = make_teacher("leap")
    for p in fixed_problems():
        solution = teacher.solve(p, random.Random(0))
        written = [int(v) for v in re.findall(r"which gives (\d+)\.", solution.response)]
        values = intermediate_values(p)
        assert written == values[1::2] + ([values[-1]] if len(values) % 2 else [])
        assert len(solution.steps) == 1 + (len(values) + 1) // 2


def test_mixed_shows_every_operation_with_its_operands():
    teacher = make_teacher("mixed")
    styles = set()
    for p, k in itertools.product(fixed_problems(), range(6)):
        solution = teacher.solve(p, random.Random(k))
        body = solution.steps
        assert len(body) == len(p.operations)
        left = p.start
        for step, o, value in zip(body, p.operations, intermediate_values(p)):
            eq = EQUATION.search(step)
            if eq:
                styles.add("numbered" if "Step " in step else "terse")
                assert eq.groups() == (str(left), o.op, str(o.operand), str(value))
            else:
                styles.add("verbose")
                assert str(left) in step and str(o.operand) in step
                assert f"which gives {value}." in step
            left = value
    assert styles == {"terse", "numbered", "verbose"}


# -- configs ---------------------------------------------------------------------------------------


def compose_preset(*overrides: str):
    return compose_config(overrides=list(overrides))


def test_toy_lalp_data_option_extends_toy():
    cfg = compose_preset("data=toy_lalp")
    toy = compose_preset("data=toy")
    assert list(cfg.data.source.teachers) == ["terse", "verbose", "ritual", "leap", "mixed"]
    for key in ("seed", "n_test", "max_ops", "max_value", "slip_rate"):
        assert cfg.data.source[key] == toy.data.source[key]
    world = ToyWorld(**{k: v for k, v in cfg.data.source.items() if k != "_target_"})
    pool = world.teacher_pool("train")
    counts = {t: pool["source"].count(t) for t in cfg.data.source.teachers}
    assert set(counts.values()) == {cfg.data.source.n_train}


def test_lalp_rank_preset_runs_the_rank_stage():
    cfg = compose_preset("experiment=toy_lalp_rank")
    assert list(cfg.data.source.teachers) == ["terse", "verbose", "ritual", "leap", "mixed"]
    assert cfg.rank._target_ == "reasonft.selection.teacher_rank.TeacherRanker"
    assert list(cfg.stages) == ["rank", "report"] and cfg.score.method == "lalp"


@pytest.mark.parametrize(
    ("preset", "target"),
    [
        ("toy_lalp_random", "simple.RandomSelector"),
        ("toy_lalp_galp_top", "per_prompt.GALPTopSelector"),
        ("toy_lalp_lalp_top", "per_prompt.LALPTopSelector"),
        ("toy_lalp_lalp_lowest", "per_prompt.LALPLowestSelector"),
        ("toy_lalp_teacher", "simple.SingleTeacherSelector"),
    ],
)
def test_lalp_presets_choose_options(preset, target):
    cfg = compose_preset(f"experiment={preset}")
    assert list(cfg.data.source.teachers) == ["terse", "verbose", "ritual", "leap", "mixed"]
    assert cfg.select._target_ == f"reasonft.selection.{target}"
    assert cfg.task_name == preset
    assert cfg.loss._target_ == compose_preset("loss=sft").loss._target_
    if preset == "toy_lalp_teacher":
        assert cfg.select.teacher == "terse"
        assert compose_preset(f"experiment={preset}", "select.teacher=leap").select.teacher == "leap"
    if preset == "toy_lalp_random":
        assert cfg.select.n == cfg.data.source.n_train and cfg.select.max_per_prompt == 1


# -- rank agreement --------------------------------------------------------------------------------


def plain_spearman(x, y):
    """1 - 6 sum d^2 / (n (n^2 - 1)) on ranks counted by hand, valid without ties."""
    n = len(x)
    rx = [1 + sum(v < xi for v in x) for xi in x]
    ry = [1 + sum(v < yi for v in y) for yi in y]
    return 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry)) / (n * (n * n - 1))


def plain_pearson_of_midranks(x, y):
    def midranks(v):
        return [sum(u < vi for u in v) + (sum(u == vi for u in v) + 1) / 2 for vi in v]

    rx, ry = midranks(x), midranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def plain_kendall_tau_b(x, y):
    concordant = discordant = ties_x_only = ties_y_only = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x_only += 1
            elif dy == 0:
                ties_y_only += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / (
        ((concordant + discordant + ties_x_only) * (concordant + discordant + ties_y_only)) ** 0.5
    )


def test_rank_correlations_match_plain_references():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(3, 9)
        x = rng.sample(range(100), n)
        y = rng.sample(range(100), n)
        assert spearman(np.array(x), np.array(y)) == pytest.approx(plain_spearman(x, y))
        assert kendall_tau_b(np.array(x), np.array(y)) == pytest.approx(plain_kendall_tau_b(x, y))
        tied_x = [rng.randint(0, 3) for _ in range(n)]
        tied_y = [rng.randint(0, 3) for _ in range(n)]
        if len(set(tied_x)) > 1 and len(set(tied_y)) > 1:
            assert spearman(np.array(tied_x), np.array(tied_y)) == pytest.approx(
                plain_pearson_of_midranks(tied_x, tied_y)
            )
            assert kendall_tau_b(np.array(tied_x), np.array(tied_y)) == pytest.approx(
                plain_kendall_tau_b(tied_x, tied_y)
            )


def test_rank_correlation_edge_cases():
    up = np.array([0.1, 0.5, 0.7, 2.0])
    assert spearman(up, up * 3) == pytest.approx(1.0)
    assert kendall_tau_b(up, -up) == pytest.approx(-1.0)
    assert np.isnan(spearman(up, np.ones(4))) and np.isnan(kendall_tau_b(np.ones(4), up))
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_agreement_bootstrap_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(12, 4))
    values[2, 1] = np.nan  # a teacher with no correct response to one prompt
    truth = np.array([0.2, 0.9, 0.4, 0.6])
    out = lalp_toy.agreement_with_truth(values, truth, n_bootstrap=300, seed=11)
    draws = np.random.default_rng(11).integers(0, 12, size=(300, 12))
    rhos, taus = [], []
    for resample in draws:
        means = []
        for t in range(4):
            cells = [values[p, t] for p in resample if not np.isnan(values[p, t])]
            means.append(sum(cells) / len(cells))
        rhos.append(plain_pearson_of_midranks(means, truth.tolist()))
        taus.append(plain_kendall_tau_b(means, truth.tolist()))
    point = [np.nanmean(values[:, t]) for t in range(4)]
    assert out["spearman"]["value"] == pytest.approx(plain_pearson_of_midranks(point, truth))
    assert out["kendall"]["value"] == pytest.approx(plain_kendall_tau_b(point, truth.tolist()))
    assert out["spearman"]["ci"] == pytest.approx(np.percentile(rhos, [2.5, 97.5]).tolist())
    assert out["kendall"]["ci"] == pytest.approx(np.percentile(taus, [2.5, 97.5]).tolist())


def test_mean_se_is_the_standard_error_of_the_mean():
    mean, se = lalp_toy.mean_se([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert se == pytest.approx((((0.01 + 0.01 + 0.0) / 2) ** 0.5) / 3**0.5)


# -- global per-step means (the per-step plot) -------------------------------------------------


def test_window_one_gives_global_per_step_means(tiny_model, tiny_tokenizer):
    """At window 1.0 every step sees all steps before it: its per-step means are those of one
    full-prefix pass, which is what the per-step plot calls global."""
    world = ToyWorld(seed=2, n_train=6, n_test=2, teachers=["ritual", "mixed"])
    records = world.teacher_pool("train").to_list()
    scored = score(records, tiny_model, tiny_tokenizer, method="all", window=1.0, steps="field",
                   progress=False)
    for record, row in zip(records, scored):
        prompt = tiny_tokenizer(build_prompt(record["prompt"], tiny_tokenizer),
                                add_special_tokens=False)["input_ids"]
        encoded = tiny_tokenizer(record["response"], add_special_tokens=False,
                                 return_offsets_mapping=True)
        ids = torch.tensor([prompt + encoded["input_ids"]])
        with torch.no_grad():
            logp = tiny_model(ids).logits[0].double().log_softmax(-1)
        starts = np.cumsum([0] + [len(s) for s in record["steps"][:-1]])
        sums = [0.0] * len(record["steps"])
        counts = [0] * len(record["steps"])
        pieces = zip(encoded["input_ids"], encoded["offset_mapping"])
        for t, (token, (begin, _)) in enumerate(pieces):
            step = int(np.searchsorted(starts, begin, side="right") - 1)
            sums[step] += float(logp[len(prompt) + t - 1, token])
            counts[step] += 1
        expected = [s / c for s, c in zip(sums, counts) if c]
        assert row["step_logps"] == pytest.approx(expected, abs=2e-4)
        assert row["galp"] == pytest.approx(sum(sums) / sum(counts), abs=2e-4)
