"""A benchmark file that repeats a problem (no ids: each record would get its own) is evaluated
on each problem once, the repeats counted; a repeat with another answer stops."""

from __future__ import annotations

import json

import datasets
import pytest

from reasonft.evaluation.evaluate import Evaluator

# Problem B repeated twice (once with other spacing): 3 distinct problems among 5 records.
ITEMS = [
    {"problem": "Compute 3 + 4.", "answer": "7"},
    {"problem": "Compute 2 * 5.", "answer": "10"},
    {"problem": "Compute  2 * 5. ", "answer": "10"},
    {"problem": "What is 9 - 1?", "answer": "8"},
    {"problem": "Compute 2 * 5.", "answer": "10"},
]


class Generator:
    """Right on problem A only: pass@1 over distinct problems is 1/3, over records 1/5."""

    temperature, top_p, max_new_tokens = 0.6, 0.95, 8

    def generate(self, problems, model, tokenizer, prompt_format=None, *, n=None, seed=None):
        return datasets.Dataset.from_list([
            {"prompt_id": p["prompt_id"], "prompt": p["prompt"], "answer": p["answer"],
             "response": "\\boxed{7}", "source": "self", "sample_idx": s, "gen_tokens": 4,
             "finish_reason": "stop"}
            for p in problems for s in range(n)
        ])


class Verifier:
    def __call__(self, ds):
        correct = [f"\\boxed{{{a}}}" in r for r, a in zip(ds["response"], ds["answer"], strict=True)]
        ds = ds.add_column("correct", correct).add_column("pred_answer", list(ds["answer"]))
        return ds.add_column("verify_status", ["x"] * len(ds)), {}


def _evaluate(path, model, tokenizer, out):
    evaluator = Evaluator(benchmarks={"rep": {"path": str(path)}}, generator=Generator(), ks=[1],
                          verifier=Verifier(), progress=False)
    return evaluator.evaluate(model, tokenizer, out)


def test_a_repeated_problem_counts_once(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps(ITEMS))
    distinct = {" ".join(i["problem"].split()) for i in ITEMS}
    results = _evaluate(path, tiny_model, tiny_tokenizer, tmp_path / "out")
    bench = results["benchmarks"]["rep"]
    assert bench["problems"] == len(distinct) == 3
    assert bench["pass@1"] == pytest.approx(1 / len(distinct))
    repeated = results["reports"]["rep"]["load"]["repeated"]
    assert repeated["count"] == len(ITEMS) - len(distinct)
    assert repeated["examples"] == [f"{path}:item 2 = {path}:item 1", f"{path}:item 4 = {path}:item 1"]
    assert any(n.startswith("rep: 2 repeated problem(s) evaluated once") for n in results["notes"])


def test_a_repeat_with_another_answer_stops_naming_both(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps([*ITEMS, {"problem": "Compute 3 + 4.", "answer": "8"}]))
    with pytest.raises(ValueError, match=r"item 5 repeats the problem of .*item 0 with another answer"):
        _evaluate(path, tiny_model, tiny_tokenizer, tmp_path / "out")
