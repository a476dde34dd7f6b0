"""Per-benchmark numbers of verified samples and their average over benchmarks (METHODS §3).

Pass@1 is the mean correctness over all samples; pass@k the unbiased estimator for every
configured k <= n; any_correct the share of problems with a correct sample among all n (the
OXA paper's Pass@k with k = n); then lengths, answer shares and, with two graders, both pass@1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from reasonft.evaluation.passk import counts_by_prompt, pass_at_k_table

# Per-benchmark numbers that are averaged over benchmarks (pass@k keys are added).
AVERAGED = (
    "pass@1", "any_correct", "mean_tokens", "median_tokens", "no_answer_share", "no_think_share",
    "truncated_share", "entropy", "grader_disagreement_share",
)
BY_GRADER = "_pass@1"  # `<grader>_pass@1`: each grader's pass@1 when eval.compare_graders is on


def benchmark_metrics(records: datasets.Dataset, n: int, ks: Sequence[int]) -> dict[str, Any]:
    """Pass@1, unbiased Pass@k (k <= n), any-correct, lengths and answer shares of verified samples.

    Every problem must have exactly `n` samples (the generator gives that).
    """
    counts = counts_by_prompt(records)
    uneven = {pid: nc[0] for pid, nc in counts.items() if nc[0] != n}
    if uneven:
        raise ValueError(f"evaluate: expected {n} samples per problem; got {dict(list(uneven.items())[:5])}")
    if not counts:
        raise ValueError("evaluate: no samples to measure")
    usable_ks = sorted({int(k) for k in ks if int(k) <= n})
    table = pass_at_k_table(usable_ks, counts=list(counts.values()))
    out: dict[str, Any] = {
        "problems": len(counts),
        "samples_per_problem": n,
        "samples": len(records),
        # Mean correctness over all samples (= the mean of per-problem c/n, all n being equal).
        "pass@1": sum(c for _, c in counts.values()) / len(records),
    }
    out.update({k: v for k, v in table.items() if k.startswith("pass@") and k != "pass@1"})
    out["skipped_ks"] = sorted({int(k) for k in ks if int(k) > n})
    out["any_correct"] = table["any_correct"]

    lengths = list(records["gen_tokens"]) if "gen_tokens" in records.column_names else None
    out["mean_tokens"] = statistics.fmean(lengths) if lengths else float("nan")
    out["median_tokens"] = float(statistics.median(lengths)) if lengths else float("nan")
    if "verify_status" in records.column_names:
        no_answer = sum(1 for s in records["verify_status"] if s == "no_answer")
        out["no_answer_share"] = no_answer / len(records) if len(records) else float("nan")
        no_think = sum(1 for s in records["verify_status"] if s == "no_think")
        out["no_think_share"] = no_think / len(records) if len(records) else float("nan")
    if "finish_reason" in records.column_names:
        truncated = sum(1 for r in records["finish_reason"] if r == "length")
        out["truncated_share"] = truncated / len(records) if len(records) else float("nan")
    return out


def grader_comparison(
    first: datasets.Dataset, second: datasets.Dataset, first_name: str, second_name: str
) -> dict[str, Any]:
    """Both graders' pass@1 on the same samples and the samples on which they disagree."""
    a, b = list(first["correct"]), list(second["correct"])
    if len(a) != len(b) or not a:
        raise ValueError(f"grader comparison: {len(a)} and {len(b)} verdicts for the same samples")
    only_first = sum(1 for x, y in zip(a, b) if x and not y)
    only_second = sum(1 for x, y in zip(a, b) if y and not x)
    return {
        f"{first_name}{BY_GRADER}": sum(a) / len(a),
        f"{second_name}{BY_GRADER}": sum(b) / len(b),
        "grader_disagreements": only_first + only_second,
        "grader_disagreement_share": (only_first + only_second) / len(a),
        f"only_{first_name}_correct": only_first,
        f"only_{second_name}_correct": only_second,
    }


def average_over_benchmarks(per_benchmark: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, float], list[str]]:
    """Mean of each number every benchmark has; notes on the ones some benchmarks lack."""
    if not per_benchmark:
        return {}, []
    keys: list[str] = []
    for metrics in per_benchmark.values():
        for key in metrics:
            averaged = key in AVERAGED or key.startswith("pass@") or key.endswith(BY_GRADER)
            if averaged and key not in keys:
                keys.append(key)
    average: dict[str, float] = {}
    notes: list[str] = []
    for key in keys:
        have = [name for name, m in per_benchmark.items() if key in m]
        if len(have) < len(per_benchmark):
            lacking = sorted(set(per_benchmark) - set(have))
            notes.append(f"{key} not averaged: {lacking} lack it (k above their n_samples)")
            continue
        values = [float(per_benchmark[name][key]) for name in have]
        average[key] = math.nan if any(math.isnan(v) for v in values) else statistics.fmean(values)
    return average, notes
