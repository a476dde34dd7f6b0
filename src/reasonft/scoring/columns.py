"""The score columns a Scorer adds to records: their features, the per-record results attached
in record order, and the counts of the stage report.

A result is one dict per record: the score columns plus `index` (the record's row), `n_steps`,
`merged_steps` and `overlength` ("truncated", "dropped" or None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

CONDITIONING_COLUMN = "score_conditioning"
GLOBAL_COLUMNS = ("ppl", "galp")  # the full-prefix pass
LOCAL_COLUMNS = ("lalp", "step_logps")  # the windowed passes
OUTPUT_FEATURES = {
    "n_tokens": datasets.Value("int64"),
    "n_scored_tokens": datasets.Value("int64"),
    "ppl": datasets.Value("float64"),
    "galp": datasets.Value("float64"),
    "lalp": datasets.Value("float64"),
    "step_logps": datasets.List(datasets.Value("float64")),
    CONDITIONING_COLUMN: datasets.Value("string"),
}


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts for the stage report: nothing skipped goes unmentioned."""
    return {
        "truncated": sum(r.get("overlength") == "truncated" for r in results),
        "dropped": sum(r.get("overlength") == "dropped" for r in results),
        "longest_response_tokens": max((r["n_tokens"] for r in results), default=0),
        "records": len(results),
        "scored": sum(r["galp"] is not None or r["lalp"] is not None for r in results),
        "unscorable": sum(
            r["galp"] is None and r["lalp"] is None and r.get("overlength") != "dropped"
            for r in results
        ),
        "response_tokens": sum(r["n_tokens"] for r in results),
        "steps": sum(r["n_steps"] for r in results),
        "merged_steps": sum(r["merged_steps"] for r in results),
    }


def attach_scores(ds: datasets.Dataset, results: Sequence[dict[str, Any]]) -> datasets.Dataset:
    """Add the score columns to `ds` in its own row order (results may come in any order);
    rows whose result is marked dropped (over-length) are left out."""
    by_index = {r["index"]: r for r in results}
    if sorted(by_index) != list(range(len(ds))) or len(results) != len(ds):
        missing = sorted(set(range(len(ds))) - set(by_index))[:10]
        raise ValueError(
            f"score: {len(results)} results for {len(ds)} records (missing rows {missing}...)"
        )
    kept = [i for i in range(len(ds)) if by_index[i].get("overlength") != "dropped"]
    if len(kept) < len(ds):
        ds = ds.select(kept).flatten_indices()
    for name, feature in OUTPUT_FEATURES.items():
        ds = ds.add_column(name, [by_index[i].get(name) for i in kept], feature=feature)
    return ds
