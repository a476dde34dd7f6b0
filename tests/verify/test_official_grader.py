"""The official OXA grader (DeepScaleR's reward function): each crafted case carries the verdict
the official evaluation code gives for it (checked by running that code on these cases)."""


import pytest
from hydra.utils import instantiate

import reasonft
from reasonft.config import compose_option
from reasonft.verify.extract import last_boxed_official
from reasonft.verify.math_normalize import math_normalize
from reasonft.verify.official import official_equal, official_extract, official_verdict
from reasonft.verify.sympy_equal import sympy_normalize
from reasonft.verify.verifier import Verifier

# (response, gold, official verdict, math-verify verdict): the first three rows are the kinds
# of response on which the two rules differ.
DIFFERING = [
    # no </think>: official -> wrong; math-verify reads the whole response
    ("The answer is \\boxed{4}.", "4", False, True),
    # two </think>: official reads between the first and the second; math-verify after the last
    ("<think>a</think> so \\boxed{3} wait</think> \\boxed{4}", "4", False, True),
    # boxed before </think> and nothing after: official finds no answer, as does math-verify
    # when the box sits inside the thinking; a box *between* the two counts for official only
    ("<think>\\boxed{4}</think> I am done.", "4", False, False),
    ("<think>a</think> \\boxed{4} </think> no box here", "4", True, False),
]

# (response, gold, official verdict)
CASES = [
    ("<think>x</think> \\boxed{4}", "4", True),
    ("<think>x</think> \\boxed{\\frac{1}{2}}", "1/2", True),  # a/b -> \frac{a}{b} (MATH normalisation)
    ("<think>x</think> \\boxed{0.5}", "\\frac12", True),  # 0.5 -> \frac{1}{2}; \frac12 braced
    ("<think>x</think> \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("<think>x</think> \\boxed{2/4}", "1/2", False),  # unreduced plain fractions never match
    ("<think>x</think> \\boxed{3.0}", "3", True),  # integral float -> integer (sympy side)
    ("<think>x</think> \\boxed{3.00001}", "3", False),  # an integer needs an integer
    ("<think>x</think> \\boxed{x = 3}", "3", True),  # a short left-hand side is dropped
    ("<think>x</think> \\boxed{\\text{Evelyn}}", "Evelyn", True),
    ("<think>x</think> \\boxed{evelyn}", "\\text{Evelyn}", True),  # lower-cased on the sympy side
    ("<think>x</think> \\boxed{10\\%}", "10", True),
    ("<think>x</think> \\boxed{5 \\text{ cm}}", "5", True),  # a trailing unit is dropped
    ("<think>x</think> \\boxed{1,000}", "1000", True),
    ("<think>x</think> \\boxed{(1, 2)}", "(1,2)", True),
    ("<think>x</think> \\boxed{[1,2)}", "(1,2)", False),  # brackets must agree
    ("<think>x</think> \\boxed{(2,1)}", "(1,2)", False),  # ordered elements
    ("<think>x</think> \\boxed{(x+1)^2}", "x^2+2x+1", True),  # sympy: difference simplifies to 0
    ("<think>x</think> \\boxed{\\sqrt{3}/2}", "\\frac{\\sqrt{3}}{2}", True),
    # "2*10^6" is not an integer string while the gold is: no sympy check, wrong
    ("<think>x</think> \\boxed{2 million}", "2000000", False),
    ("<think>x</think> \\boxed{90^\\circ}", "90", True),
    ("<think>x</think> \\boxed{7 3/4}", "31/4", True),  # a mixed number
    ("<think>x</think> \\boxed 4", "4", False),  # no brace-less box
    ("<think>x</think> \\boxed {4}", "4", False),  # `\boxed` must be followed by `{`
    ("<think>x</think> \\fbox{4}", "4", False),  # no \fbox
    ("<think>x</think> \\boxed{4} and \\boxed{5", "4", False),  # last box never closes
    ("<think>x</think> \\boxed{5} then \\boxed{4}", "4", True),  # the last box counts
    ("<think>x</think> \\boxed{4}", "\\boxed{4}", True),  # a boxed gold is read the same way
    ("<think>x</think> \\boxed{4}", ["5", "4"], True),  # any accepted form
    ("<think>x</think> \\boxed{}", "4", False),
    ("<think>x</think> \\boxed{\\{1,2\\}}", "\\{1,2\\}", True),  # escaped braces counted as written
]


@pytest.mark.parametrize(("response", "gold", "official", "math_verify"), DIFFERING)
def test_the_two_rules_differ_where_the_official_code_does(response, gold, official, math_verify):
    assert official_verdict(response, gold) is official
    assert reasonft.is_correct(response, gold, grader="official") is official
    assert reasonft.is_correct(response, gold) is math_verify


@pytest.mark.parametrize(("response", "gold", "expected"), CASES)
def test_official_verdicts(response, gold, expected):
    assert official_verdict(response, gold) is expected
    if isinstance(gold, str):
        assert reasonft.is_correct(response, gold, grader="official") is expected


def test_official_extraction_statuses():
    assert official_extract("no think tag \\boxed{1}") == (None, "no_think")
    assert official_extract("<think>a</think> no box") == (None, "no_answer")
    assert official_extract("<think>a</think> \\boxed{1} </think> \\boxed{2}") == ("1", "ok")
    assert last_boxed_official("\\boxed{\\frac{1}{2}} x") == "\\frac{1}{2}"
    assert last_boxed_official("\\boxed{1} \\boxed 2") is None  # the last \boxed decides


# Normal forms written out by hand from the documented steps (MATH normalisation; the sympy
# side's looser one), independent of the code under test.
@pytest.mark.parametrize(
    ("answer", "mathd", "sympy_side"),
    [
        ("\\frac12", "\\frac{1}{2}", "1/2"),
        ("0.5", "\\frac{1}{2}", "0.5"),
        ("x = 3", "3", "x=3"),
        ("\\text{Evelyn}", "Evelyn", "evelyn"),
        ("5 \\text{ cm}", "5", "5"),
        ("\\left(1,2\\right)", "(1,2)", "(1,2)"),
        ("1,000", "1,000", "1000"),
        ("3/4", "\\frac{3}{4}", "3/4"),
        ("\\sqrt3", "\\sqrt{3}", "sqrt(3)"),
        ("\\sqrt", "\\sqrt", "\\sqrt"),  # both trip and keep the answer
    ],
)
def test_normal_forms(answer, mathd, sympy_side):
    assert math_normalize(answer) == mathd
    assert sympy_normalize(answer) == sympy_side


def test_official_equal_is_symmetric_on_simple_pairs():
    for a, b in [("1/2", "\\frac{1}{2}"), ("(x+1)^2", "x^2+2x+1"), ("3", "3.0")]:
        assert official_equal(a, b) and official_equal(b, a)


def _verify_config(option: str):
    return compose_option("verify", option)


def test_verify_official_config_counts_missing_think_in_the_report():
    cfg = _verify_config("official")
    assert cfg.answer_rule == "official"
    assert cfg.verify_fn == "reasonft.verify.official.official_equal"
    verifier = instantiate(cfg, workers=1, show_progress=False)
    assert verifier.grader == "official"
    records = [
        {"prompt_id": "a", "response": "The answer is \\boxed{4}.", "answer": "4"},
        {"prompt_id": "b", "response": "<think>x</think> \\boxed{4}", "answer": "4"},
        {"prompt_id": "c", "response": "<think>x</think> \\boxed{5}", "answer": "4"},
        {"prompt_id": "d", "response": "<think>x</think> no box", "answer": "4"},
    ]
    out, report = verifier(records)
    assert [r["verify_status"] for r in out] == ["no_think", "correct", "incorrect", "no_answer"]
    assert [r["correct"] for r in out] == [False, True, False, False]
    assert report["status"]["no_think"] == 1 and report["accuracy"] == 0.25
    assert report["grader"] == "official"
    default = instantiate(_verify_config("default"), workers=1, show_progress=False)
    out_default, report_default = default(records)
    assert [r["correct"] for r in out_default] == [True, True, False, False]
    assert report_default["status"]["no_think"] == 0 and report_default["grader"] == "math_verify"


def test_bad_answer_rule_and_grader_name_the_key():
    with pytest.raises(ValueError, match="verify.answer_rule"):
        Verifier(answer_rule="first")
    with pytest.raises(ValueError, match="grader"):
        reasonft.is_correct("\\boxed{1}", "1", grader="sympy")


def test_is_correct_official_time_limit_cuts_a_slow_comparison(monkeypatch):
    import time

    from reasonft.verify import official

    def slow(pred, gold):
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001 - the grader's own handlers must not stop the limit
            time.sleep(5)
        return True

    monkeypatch.setattr(official, "official_equal", slow)
    # `slow` says True once it returns: False is the time limit's verdict.
    assert reasonft.is_correct("<think>x</think> \\boxed{4}", "4", timeout=0.2, grader="official") is False
