"""The rl reward: METHODS §1f's rule on crafted responses, and the verdicts counted by outcome."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

import reasonft
from reasonft.config import compose_config
from reasonft.rl.reward import VerifierReward
from reasonft.verify.rl_reward import rl_extract, rl_verdict

# (response, gold, reward by §1f's rule), written out by hand.
CASES = [
    ("<think>3 + 4 = 7</think> so \\boxed{7}", "7", True),
    ("<think>3 + 4 = 7</think> so \\boxed{8}", "7", False),
    # No </think>: 0, whatever the box says (the default grader reads the whole response).
    ("3 + 4 = 7 so \\boxed{7}", "7", False),
    ("", "7", False),
    # Several </think>: only the text after the last one counts.
    ("<think>a</think> \\boxed{7} <think>b</think> \\boxed{9}", "9", True),
    ("<think>a</think> \\boxed{7} <think>b</think> \\boxed{9}", "7", False),
    ("<think>a</think> \\boxed{7} </think>", "7", False),  # nothing after the last one
    # Nested braces inside the box.
    ("<think>x</think> \\boxed{\\frac{1}{2}}", "0.5", True),
    ("<think>x</think> \\boxed{\\sqrt{\\frac{9}{4}}}", "3/2", True),
    ("<think>x</think> \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    ("<think>x</think> \\boxed{\\frac{1}{3}}", "0.5", False),
    # The text after </think> is read as a whole: an unboxed final number counts too.
    ("<think>x</think> The answer is 12", "12", True),
]


@pytest.mark.parametrize(("response", "gold", "expected"), CASES)
def test_rl_rule_on_crafted_responses(response, gold, expected):
    assert rl_verdict(response, gold) is expected
    assert reasonft.is_correct(response, gold, grader="rl") is expected


def test_the_answer_region_is_after_the_last_think():
    assert rl_extract("no think here \\boxed{1}") == (None, "no_think")
    assert rl_extract("<think>a</think>b</think> c") == (" c", "ok")


def test_the_three_graders_differ_where_the_rules_do():
    # after the first </think> (official) vs the last (rl) vs no </think> needed (default)
    two = "<think>a</think> \\boxed{7} <think>b</think> \\boxed{9}"
    assert reasonft.is_correct(two, "7", grader="official") is True
    assert reasonft.is_correct(two, "9", grader="rl") is True
    bare = "so \\boxed{7}"
    assert reasonft.is_correct(bare, "7") is True
    assert reasonft.is_correct(bare, "7", grader="rl") is False


def _verifier(**overrides):
    cfg = compose_config(overrides=["verify=rl"])
    node = cfg.verify
    node.update({"show_progress": False, "workers": 1, **overrides})
    return instantiate(node)


def test_reward_values_and_counts_by_outcome():
    verifier = _verifier(timeout=1.0)
    assert verifier.grader == "rl"
    reward = VerifierReward(verifier)
    logged = {}
    completions = [
        "<think>x</think> \\boxed{7}",          # correct
        "<think>x</think> \\boxed{8}",          # incorrect
        "\\boxed{7}",                           # no </think>
        "<think>x</think> \\boxed{9^{9^{9^{9}}}}",  # math-verify never returns: cut off
    ]
    values = reward(
        completions=completions, answer=["7", "7", "7", "5"], prompt_id=["a", "b", "c", "d"],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert values == [1.0, 0.0, 0.0, 0.0]
    report = reward.report()
    assert report["rollouts"] == 4
    assert report["grader"] == "rl"
    assert {k: v for k, v in report["status"].items() if v} == {
        "correct": 1, "incorrect": 1, "no_think": 1, "timeout": 1
    }
    assert report["mean_reward"] == 0.25
    assert logged["reward_status/correct"] == 0.25
    assert logged["reward_status/no_think"] == 0.25
    # Counts accumulate over calls (the whole run's rollouts).
    reward(completions=["<think>x</think> \\boxed{7}"], answer=["7"])
    assert reward.report()["status"]["correct"] == 2


def test_a_run_can_choose_the_evaluation_or_the_default_grader():
    official = compose_config(overrides=["verify@rl.reward=official"])
    default = compose_config(overrides=["verify@rl.reward=default"])
    assert official.rl.reward.answer_rule == "official"
    assert default.rl.reward.answer_rule == "last_think"
    reward = VerifierReward(instantiate({**default.rl.reward, "show_progress": False}))
    assert reward(completions=["\\boxed{7}"], answer=["7"]) == [1.0]  # no </think> needed there


def test_kept_workers_give_the_same_verdicts_from_one_warm_pool():
    verifier = _verifier(timeout=5.0)
    records = [
        {"prompt_id": str(i), "response": f"<think>x</think> \\boxed{{{i % 3}}}", "answer": "1"}
        for i in range(6)
    ]
    plain, _ = verifier(records)
    with verifier.kept_workers():
        pids = [w.process.pid for w in verifier._kept.workers]
        first, _ = verifier(records)
        second, report = verifier(records)
        assert [w.process.pid for w in verifier._kept.workers] == pids  # no worker started again
    assert verifier._kept is None
    expected = ["incorrect", "correct", "incorrect"] * 2
    for out in (plain, first, second):
        assert [r["verify_status"] for r in out] == expected
    assert report["workers_replaced"] == 0
