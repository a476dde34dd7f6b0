"""The headline of one evaluation: what a run or a sweep is compared by.

An evaluation summary (`Evaluator.evaluate`'s result, `results.json["results"][tag]`) holds one
entry per benchmark. Its headline reads them by kind, from the benchmark settings it records:
*greedy* benchmarks (one sample at temperature 0: their pass@1 is the greedy accuracy) and
*sampled* ones (several samples: Pass@1, Pass@k, the entropy of the policy's own samples). Each
value is the mean over the benchmarks of its kind, so a run on six benchmarks still has one
number per column; the benchmarks each mean covers are named beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Headline:
    """Pass@1, Pass@k (the largest k every sampled benchmark has), the entropy on the model's own
    samples and the greedy accuracy; `curve` is k -> mean pass@k over the sampled benchmarks."""

    pass1: float | None = None
    passk: float | None = None
    k: int | None = None
    entropy: float | None = None
    greedy: float | None = None
    curve: dict[int, float] = field(default_factory=dict)
    sampled: list[str] = field(default_factory=list)
    greedy_benchmarks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pass@1": self.pass1,
            f"pass@{self.k}" if self.k else "pass@k": self.passk,
            "entropy": self.entropy,
            "greedy_accuracy": self.greedy,
            "pass@k_curve": {str(k): v for k, v in sorted(self.curve.items())},
            "sampled_benchmarks": self.sampled,
            "greedy_benchmarks": self.greedy_benchmarks,
        }


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def is_greedy(settings: Mapping[str, Any]) -> bool:
    """One sample at temperature 0: its pass@1 is the greedy accuracy."""
    return int(settings.get("n_samples") or 0) == 1 and settings.get("temperature") == 0


def headline(summary: Mapping[str, Any]) -> Headline:
    """The headline of one evaluation summary (see the module docstring)."""
    per = summary.get("benchmarks") or {}
    settings = {b["name"]: b for b in (summary.get("settings") or {}).get("benchmarks", []) if "name" in b}
    greedy = [name for name in per if is_greedy(settings.get(name, {}))]
    sampled = [name for name in per if name not in greedy]
    out = Headline(sampled=sampled, greedy_benchmarks=greedy)
    out.greedy = _mean([per[b].get("pass@1") for b in greedy])
    if not sampled:
        return out
    out.pass1 = _mean([per[b].get("pass@1") for b in sampled])
    out.entropy = _mean([per[b].get("entropy") for b in sampled])
    ks = set.intersection(
        *({int(key[5:]) for key, v in per[b].items() if key.startswith("pass@") and v is not None}
          for b in sampled)
    )
    for k in sorted(ks):
        value = _mean([per[b][f"pass@{k}"] for b in sampled])
        if value is not None:
            out.curve[k] = value
    if out.curve:
        out.k = max(out.curve)
        out.passk = out.curve[out.k]
    return out
