"""The verify report: counts by status, overall and by source, the first messages, the grader."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import datasets

# "no_think": the official rule (answer_rule=official) found no `</think>` in the response.
STATUSES = ("correct", "incorrect", "no_answer", "no_think", "timeout", "error")
_KEPT_EXAMPLES = 10


def verify_report(
    ds: datasets.Dataset, statuses: list[str], notes: dict[int, str]
) -> dict[str, Any]:
    """Counts of `statuses` (one per record of `ds`), by `source` when the records have one, and
    the first rows with a message (`notes`: row -> message)."""
    counts = Counter(statuses)
    by_source: dict[str, Counter] = defaultdict(Counter)
    if "source" in ds.column_names:
        for source, status in zip(ds["source"], statuses, strict=True):
            by_source[str(source)][status] += 1
    ids = ds["prompt_id"] if "prompt_id" in ds.column_names else None
    examples = [
        {"row": i, "prompt_id": ids[i] if ids else None, "status": statuses[i], "message": note}
        for i, note in sorted(notes.items())[:_KEPT_EXAMPLES]
    ]
    n = len(statuses)
    return {
        "records": n,
        "accuracy": counts["correct"] / n if n else 0.0,
        "status": {s: counts[s] for s in STATUSES},
        "by_source": {
            src: {"records": sum(c.values()), **{s: c[s] for s in STATUSES}}
            for src, c in sorted(by_source.items())
        },
        "examples": examples,
    }
