"""The evaluation's results sent to Lightning loggers: scalar metrics to every logger; for W&B
also the sample table, the Markdown table and the pass@k plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from reasonft.evaluation.tables import markdown_table

SAMPLE_TABLE_COLUMNS = ["benchmark", "prompt_id", "sample_idx", "answer", "pred_answer", "correct", "gen_tokens", "response"]


def flat_metrics(results: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Scalar metrics for loggers: `{prefix}{benchmark}/{metric}`, `{prefix}average/...`."""
    out: dict[str, float] = {}
    for name, m in results["benchmarks"].items():
        for key, value in m.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                out[f"{prefix}{name}/{key}"] = float(value)
    for key, value in results["average"].items():
        if value is not None:
            out[f"{prefix}average/{key}"] = float(value)
    heldout = results.get("heldout_entropy")
    if heldout and heldout.get("entropy") is not None:
        out[f"{prefix}heldout/entropy"] = float(heldout["entropy"])
    return {k: v for k, v in out.items() if not math.isnan(v)}


def log_to_loggers(
    loggers: Sequence[Any],
    results: Mapping[str, Any],
    table: list[list[Any]],
    plot: Path | None,
    prefix: str,
    step: int | None,
) -> None:
    """Metrics to every logger; for W&B also the sample table, the Markdown table and the plot."""
    metrics = flat_metrics(results, prefix)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if hasattr(logger, "log_table"):
            logger.log_table(key=f"{prefix}samples", columns=SAMPLE_TABLE_COLUMNS, data=table, step=step)
        if hasattr(logger, "log_text"):
            logger.log_text(key=f"{prefix}table", columns=["markdown"], data=[[markdown_table(results)]], step=step)
        if plot is not None and hasattr(logger, "log_image"):
            logger.log_image(key=f"{prefix}pass_at_k", images=[str(plot)], step=step)
        if hasattr(logger, "save"):
            logger.save()


def sample_table_rows(name: str, verified: datasets.Dataset, max_rows: int) -> list[list[Any]]:
    """The first sample of the first `max_rows` problems, for a logged table."""
    rows = []
    for record in verified:
        if len(rows) >= max_rows:
            break
        if record.get("sample_idx", 0) != 0:
            continue
        rows.append([
            name, str(record["prompt_id"]), record.get("sample_idx", 0), str(record["answer"]),
            str(record.get("pred_answer")), bool(record["correct"]), record.get("gen_tokens"),
            record["response"],
        ])
    return rows
