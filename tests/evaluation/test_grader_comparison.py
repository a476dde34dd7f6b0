"""eval.compare_graders: both graders' pass@1 on the same samples, and their disagreements."""

from __future__ import annotations

import json

import datasets
import pytest

from reasonft.evaluation.evaluate import Evaluator
from reasonft.evaluation.tables import markdown_table
from reasonft.verify.graders import OFFICIAL_VERIFY_FN
from reasonft.verify.verifier import Verifier

PROBLEMS = [
    {"problem": "Compute 3 + 4.", "answer": "7"},
    {"problem": "Compute (12 - 5) * 3.", "answer": "21"},
]
# (response for gold a, correct for math-verify, correct for the official grader)
KINDS = [
    (lambda a: f"<think>x</think> \\boxed{{{a}}}", True, True),
    (lambda a: f"The answer is \\boxed{{{a}}}.", True, False),  # no </think>
    (lambda a: f"<think>x</think> \\boxed{{{a}}} </think> \\boxed{{-1}}", False, True),  # two </think>
    (lambda a: "<think>x</think> \\boxed{-1}", False, False),
    (lambda a: f"<think>\\boxed{{{a}}}</think> done", False, False),  # boxed before </think> only
]


class KindsGenerator:
    temperature, top_p, max_new_tokens = 0.6, 0.95, None

    def generate(self, problems, model, tokenizer, prompt_format=None, *, n=None, seed=None):
        assert n == len(KINDS)
        rows = [
            {"prompt_id": p["prompt_id"], "prompt": p["prompt"], "answer": p["answer"],
             "response": make(p["answer"]), "source": "self", "sample_idx": s, "gen_tokens": 5,
             "finish_reason": "stop"}
            for p in problems for s, (make, _, _) in enumerate(KINDS)
        ]
        return datasets.Dataset.from_list(rows)


def _evaluator(bench_dir, primary, second, compare=True):
    return Evaluator(
        benchmarks={"two": {"path": str(bench_dir / "two.json"), "n_samples": len(KINDS)}},
        generator=KindsGenerator(), ks=[1], verifier=primary, seed=0, progress=False,
        compare_graders=compare, second_verifier=second,
    )


@pytest.fixture()
def bench_dir(tmp_path):
    (tmp_path / "two.json").write_text(json.dumps(PROBLEMS))
    return tmp_path


def test_both_pass_at_1_and_the_disagreements(tiny_model, tiny_tokenizer, bench_dir, tmp_path):
    official = Verifier(workers=1, show_progress=False, verify_fn=OFFICIAL_VERIFY_FN, answer_rule="official")
    default = Verifier(workers=1, show_progress=False)
    results = _evaluator(bench_dir, official, default).evaluate(tiny_model, tiny_tokenizer, tmp_path / "out")
    m = results["benchmarks"]["two"]
    n = len(KINDS)
    assert m["pass@1"] == m["official_pass@1"] == sum(o for _, _, o in KINDS) / n
    assert m["math_verify_pass@1"] == sum(v for _, v, _ in KINDS) / n
    disagree = sum(v != o for _, v, o in KINDS) * len(PROBLEMS)
    assert m["grader_disagreements"] == disagree
    assert m["grader_disagreement_share"] == disagree / (n * len(PROBLEMS))
    assert m["only_official_correct"] == sum(o and not v for _, v, o in KINDS) * len(PROBLEMS)
    assert m["only_math_verify_correct"] == sum(v and not o for _, v, o in KINDS) * len(PROBLEMS)
    assert m["no_think_share"] == 1 / n
    assert results["average"]["math_verify_pass@1"] == m["math_verify_pass@1"]
    assert results["settings"]["grader"] == "official"
    assert results["settings"]["second_grader"] == "math_verify"
    assert "math_verify_pass@1" in markdown_table(results) and "grader_disagreements" in markdown_table(results)
    saved = datasets.Dataset.from_parquet(str(tmp_path / "out" / "samples" / "two.parquet"))
    assert saved["second_grader_correct"] == [v for _ in PROBLEMS for _, v, _ in KINDS]


def test_comparison_needs_a_different_second_grader(bench_dir):
    default = Verifier(workers=1, show_progress=False)
    with pytest.raises(ValueError, match="eval.second_verifier"):
        _evaluator(bench_dir, default, None)
    with pytest.raises(ValueError, match="same grader"):
        _evaluator(bench_dir, default, Verifier(workers=1, show_progress=False))
    assert _evaluator(bench_dir, default, None, compare=False).second_verifier is None
