"""The GRPO reward: reasonft's verifier on each completion, 1 when correct, else 0.

The grader is the `rl.reward` verify config (`verify=rl`, METHODS §1f's rule, by default; the
evaluation grader `verify=official` or the default `verify=default` also fit). Every verdict is
counted by outcome — correct, incorrect, no `</think>`, time-out (and no answer, error) — over
the whole run for the stage report, and each step's shares are logged beside TRL's metrics.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from reasonft.verify.report import STATUSES


class VerifierReward:
    """A TRL reward function (`reward_funcs=[VerifierReward(verifier)]`) around a reasonft Verifier.

    TRL calls it with the completions and the dataset's other columns, one value per completion:
    `answer` (the gold answer) and, when the data has it, `answer_alternatives`.
    """

    __name__ = "verifier"  # TRL names the reward's logged metrics after it (rewards/verifier/mean)

    def __init__(self, verifier: Any) -> None:
        self.verifier = verifier
        self.counts: Counter[str] = Counter()

    def __call__(
        self,
        completions: list[Any],
        answer: list[str],
        log_metric: Any = None,
        **columns: Any,
    ) -> list[float]:
        records = []
        alternatives = columns.get("answer_alternatives")
        ids = columns.get("prompt_id")
        for i, (completion, gold) in enumerate(zip(completions, answer, strict=True)):
            record = {"response": _text(completion), "answer": str(gold)}
            if ids is not None:
                record["prompt_id"] = str(ids[i])
            if alternatives is not None:
                record["answer_alternatives"] = list(alternatives[i] or [])
            records.append(record)
        verified, _report = self.verifier(records)
        statuses = [r["verify_status"] for r in verified]
        step = Counter(statuses)
        self.counts.update(step)
        if log_metric is not None:
            for status in STATUSES:
                log_metric(f"reward_status/{status}", step[status] / len(statuses))
        return [1.0 if r["correct"] else 0.0 for r in verified]

    def report(self) -> dict[str, Any]:
        """The verdicts of every rollout so far, by outcome (this process's share of them)."""
        total = sum(self.counts.values())
        return {
            "rollouts": total,
            "grader": getattr(self.verifier, "grader", type(self.verifier).__name__),
            "status": {s: int(self.counts[s]) for s in STATUSES},
            "mean_reward": self.counts["correct"] / total if total else None,
        }


def _text(completion: Any) -> str:
    """A completion's text: TRL hands over strings, or chat messages for conversational data."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)
