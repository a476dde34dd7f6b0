"""The run's final table: columns in a fixed order, the before -> after line per benchmark."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from reasonft.pipeline.plan import make_plan
from reasonft.pipeline.report import _metric_rows, before_after, write_final_report
from reasonft.stages.base_student import BaseStudent
from reasonft.stages.evaluate import Evaluate

RESULTS = {
    "base": {
        "benchmarks": {
            "greedy": {"pass@1": 0.2, "any_correct": 0.2, "mean_tokens": 30.0},
            "sampled": {"pass@1": 0.15, "pass@2": 0.25, "pass@8": 0.5, "any_correct": 0.5},
        },
        "heldout_entropy": {"entropy": 0.4},
    },
    "trained": {
        "benchmarks": {
            "greedy": {"pass@1": 0.35, "any_correct": 0.35, "mean_tokens": 32.0},
            "sampled": {"pass@1": 0.3, "pass@2": 0.4, "pass@8": 0.75, "any_correct": 0.75},
        },
    },
}


def test_columns_start_with_pass_at_k_whatever_the_benchmark_order():
    columns, rows = _metric_rows(RESULTS)
    assert columns == ["pass@1", "pass@8", "any_correct", "mean_tokens", "heldout_entropy"]
    assert rows[0] == ["base", "greedy", "0.200", "", "0.200", "30.0", "0.400"]
    assert rows[3] == ["trained", "sampled", "0.300", "0.750", "0.750", "", ""]


def test_before_after_lines():
    assert before_after(RESULTS) == [
        "greedy pass@1: base 0.200 -> trained 0.350 (+0.150)",
        "sampled pass@1: base 0.150 -> trained 0.300 (+0.150)",
    ]
    assert before_after({"base": RESULTS["base"]}) == []


def test_final_report_files(tmp_path):
    cfg = OmegaConf.create({"task_name": "t", "objective": "pass@1", "paths": {"artifacts_dir": "a"}, "stages": ["evaluate"]})
    plan = make_plan(["evaluate", "report"], {"base": BaseStudent(), "evaluate": Evaluate()}, has_build=True)
    objective = write_final_report(cfg, plan, [], RESULTS, tmp_path)
    assert objective is None  # these results carry no "average"
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# t\n") and "plan: base -> evaluate -> report" in md
    assert "| model | benchmark | pass@1 | pass@8 |" in md
    assert "- greedy pass@1: base 0.200 -> trained 0.350 (+0.150)" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["before_after"][0].startswith("greedy pass@1")


def test_objective_is_an_average_or_one_benchmarks_metric():
    from reasonft.pipeline.report import objective_value

    results = {"base": {"average": {"pass@1": 0.1}}, "trained": {**RESULTS["trained"], "average": {"pass@1": 0.325}}}
    assert objective_value(OmegaConf.create({"objective": "pass@1"}), results) == 0.325
    assert objective_value(OmegaConf.create({"objective": "greedy/pass@1"}), results) == 0.35
    assert objective_value(OmegaConf.create({"objective": "sampled/pass@8"}), results) == 0.75
    with pytest.raises(ValueError, match="no benchmark 'nope'"):
        objective_value(OmegaConf.create({"objective": "nope/pass@1"}), results)
