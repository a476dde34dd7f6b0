
import os
import signal

import pytest
from conftest import BENCHMARKS, needs_shared

from reasonft.data.loaders import load_records
from reasonft.verify.extract import extract_answer
from reasonft.verify.in_process import is_correct
from reasonft.verify.verifier import Verifier


def r1_response(answer: str) -> str:
    return f"<think>\nLet me work it out.\n</think>\nSo the answer is \\boxed{{{answer}}}."


# -- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\frac{\\sqrt{\\frac{a}{b}}}{2}} done", "\\frac{\\sqrt{\\frac{a}{b}}}{2}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("<think>\\boxed{1}</think>final: \\boxed{2}", "2"),
        ("<think>a</think><think>\\boxed{1}</think> \\boxed{ 3 }", "3"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\text{a \\} b}}", "\\text{a \\} b}"),
        ("the answer is $\\boxed 5$.", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed {8}", "8"),
        ("no box here", None),
        ("<think>\\boxed{4}</think> I am not sure.", None),
        ("\\boxed{}", None),
        ("\\boxed{3} and then \\boxed{\\frac{1}{", None),
        ("\\boxedx{3}", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


# -- equivalence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("2^{99}", "2^{99}", True),
        ("2^{98}", "2^{99}", False),
        ("[1,2)", "[1, 2)", True),
        ("(1,2]", "[1, 2)", False),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("141", "142", False),
        ("25", "025", True),
        ("3\\sqrt{35}", "$3\\sqrt{35}$", True),
        ("\\text{Evelyn}", "\\text{Evelyn}", True),
        ("\\text{Bob}", "\\text{Evelyn}", False),
    ],
)
def test_is_correct_pairs(pred, gold, expected):
    assert is_correct(r1_response(pred), gold) is expected


def test_only_the_answer_after_think_counts():
    assert not is_correct("<think>\\boxed{142}</think> Final answer: \\boxed{141}.", "142")
    assert is_correct("<think>\\boxed{141}</think> Final answer: \\boxed{142}.", "142")
    assert not is_correct("<think>It is 142.</think> The answer is 142.", "142")


# -- the Verifier stage ------------------------------------------------------------------------


def test_verifier_columns_statuses_and_report():
    records = [
        {
            "prompt_id": "a",
            "response": r1_response("\\frac{1}{2}"),
            "answer": "0.5",
            "source": "r1",
        },
        {"prompt_id": "b", "response": r1_response("7"), "answer": "8", "source": "r1"},
        {
            "prompt_id": "c",
            "response": "<think>\\boxed{3}</think> no idea",
            "answer": "3",
            "source": "qwq",
        },
        {"prompt_id": "d", "response": r1_response("[1,2)"), "answer": "[1, 2)", "source": "qwq"},
        {"prompt_id": "e", "response": r1_response("5"), "answer": "  ", "source": "qwq"},
    ]
    out, report = Verifier(timeout=30.0, workers=2, show_progress=False)(records)
    assert isinstance(out, list)
    assert [r["verify_status"] for r in out] == [
        "correct",
        "incorrect",
        "no_answer",
        "correct",
        "error",
    ]
    assert [r["correct"] for r in out] == [True, False, False, True, False]
    assert [r["pred_answer"] for r in out] == ["\\frac{1}{2}", "7", "", "[1,2)", "5"]
    assert report["status"] == {
        "correct": 2,
        "incorrect": 1,
        "no_answer": 1,
        "no_think": 0,
        "timeout": 0,
        "error": 1,
    }
    assert report["by_source"]["r1"] == {
        "records": 2,
        "correct": 1,
        "incorrect": 1,
        "no_answer": 0,
        "no_think": 0,
        "timeout": 0,
        "error": 0,
    }
    assert report["by_source"]["qwq"]["records"] == 3
    assert report["accuracy"] == pytest.approx(2 / 5)
    assert report["examples"][0]["prompt_id"] == "e"


def test_any_accepted_form_of_the_gold_answer_counts():
    """Records with `answer_alternatives` (Minerva's answer lists): a prediction matching any
    accepted form is correct; one matching none keeps the first form's status."""
    records = [
        {"prompt_id": "a", "response": r1_response("0.02"), "answer": "0.01", "answer_alternatives": ["0.02"]},
        {"prompt_id": "b", "response": r1_response("0.01"), "answer": "0.01", "answer_alternatives": ["0.02"]},
        {"prompt_id": "c", "response": r1_response("0.03"), "answer": "0.01", "answer_alternatives": ["0.02", " "]},
        {"prompt_id": "d", "response": r1_response("6630"), "answer": "6630.65", "answer_alternatives": []},
        {"prompt_id": "e", "response": "no box", "answer": "1", "answer_alternatives": ["2"]},
    ]
    out, report = Verifier(timeout=30.0, workers=2, show_progress=False)(records)
    assert [r["verify_status"] for r in out] == ["correct", "correct", "incorrect", "incorrect", "no_answer"]
    assert report["correct_by_alternative_answer"] == 1
    assert out[0]["answer_alternatives"] == ["0.02"]  # the column is kept as it was


def test_verifier_refuses_bad_input():
    with pytest.raises(ValueError, match="lack column"):
        Verifier(show_progress=False)([{"response": "x"}])
    with pytest.raises(ValueError, match="already have"):
        Verifier(show_progress=False)([{"response": "x", "answer": "1", "correct": True}])
    with pytest.raises(ValueError, match="timeout"):
        Verifier(timeout=0)
    with pytest.raises(ValueError, match="cannot import"):
        Verifier(verify_fn="reasonft.verify.verifier.no_such_function")


@needs_shared(BENCHMARKS)
def test_every_gold_answer_verifies_against_itself():
    from conftest import BENCHMARK_FIELDS

    records = []
    for name, fields in BENCHMARK_FIELDS.items():
        ds, _ = load_records(BENCHMARKS / name, fields)
        rows = ds.to_list()
        if name.endswith(".parquet"):
            rows = rows[::50]  # a spread of 200 training golds keeps the test short
        records += [{**r, "source": name, "response": r1_response(r["answer"])} for r in rows]
    assert len(records) > 1200
    out, report = Verifier(timeout=30.0, workers=2, show_progress=False)(records)
    failed = [(r["source"], r["answer"], r["verify_status"]) for r in out if not r["correct"]]
    assert failed == []
    assert report["status"]["correct"] == len(records)
    assert all(r["pred_answer"] == r["answer"] for r in out)


# -- time limits ---------------------------------------------------------------------------------


def test_real_pathological_input_is_cut_off_and_the_stage_goes_on():
    # math-verify evaluates 9^(9^(9^9)) symbolically and never returns without a time limit.
    answers = ["1", "9^{9^{9^{9}}}", "2", "3"]
    records = [
        {"prompt_id": str(i), "response": r1_response(a), "answer": a}
        for i, a in enumerate(answers)
    ]
    records[1]["answer"] = "5"
    out, report = Verifier(timeout=1.0, workers=1, show_progress=False)(records)
    assert [r["verify_status"] for r in out] == ["correct", "timeout", "correct", "correct"]
    assert out[1]["correct"] is False
    assert report["status"]["timeout"] == 1
    assert report["workers_replaced"] == 1


def test_injected_c_level_hang_and_error_do_not_stop_the_stage():
    # verify_fn = re.fullmatch(pred, gold): "(a+)+" against "a...ab" backtracks for hours inside
    # C code, where no signal-based time limit can reach; "(" raises re.error.
    stuck = ("(a+)+", "a" * 40 + "b")
    pairs = [("a", "a"), stuck, ("b", "c"), ("(", "x"), ("c+", "ccc"), stuck, ("d", "d")]
    records = [
        {"prompt_id": str(i), "response": f"\\boxed{{{p}}}", "answer": g}
        for i, (p, g) in enumerate(pairs)
    ]
    out, report = Verifier(timeout=1.0, workers=2, verify_fn="re.fullmatch", show_progress=False)(
        records
    )
    statuses = [r["verify_status"] for r in out]
    assert statuses == ["correct", "timeout", "incorrect", "error", "correct", "timeout", "correct"]
    assert report["status"] == {
        "correct": 3,
        "incorrect": 1,
        "no_answer": 0,
        "no_think": 0,
        "timeout": 2,
        "error": 1,
    }
    assert report["workers_replaced"] == 2
    errors = [e for e in report["examples"] if e["status"] == "error"]
    assert [e["prompt_id"] for e in errors] == ["3"]
    assert "unterminated subpattern" in errors[0]["message"]


def test_a_worker_killed_while_idle_is_replaced_and_the_kept_pool_grades_on():
    # The RL reward keeps one pool for a whole run; a worker lost between two calls (the OOM
    # killer, say) must not take the pool down (pebble's ProcessPool breaks for good there:
    # bench/verify_pool.py, idle_death).
    verifier = Verifier(timeout=5.0, workers=2, verify_fn="operator.eq", show_progress=False)
    records = [{"response": f"\\boxed{{{i % 2}}}", "answer": "1"} for i in range(6)]
    with verifier.kept_workers():
        first, _ = verifier(records)
        lost = verifier._kept.workers[0].process
        os.kill(lost.pid, signal.SIGKILL)
        lost.join(timeout=10)
        second, report = verifier(records)
        assert lost not in [w.process for w in verifier._kept.workers]
    assert [r["verify_status"] for r in second] == [r["verify_status"] for r in first]
    assert [r["verify_status"] for r in first] == ["incorrect", "correct"] * 3
    assert report["workers_replaced"] == 1

