"""The run's final table: what each stage did and the evaluation before and after fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from reasonft.io import write_json, write_text
from reasonft.pipeline.artifacts import Artifact


SHORT = {
    "any_correct": "any",
    "entropy": "H(own)",
    "heldout_entropy": "H(held)",
    "mean_tokens": "tokens",
    "no_answer_share": "no ans",
}
SHOWN = ("pass@1", "any_correct", "entropy", "mean_tokens", "no_answer_share")


def _metric_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows of (model, benchmark, key metrics); the full set stays in results.json."""
    columns: list[str] = []
    rows: list[list[str]] = []
    for tag, summary in results.items():
        for bench, metrics in summary.get("benchmarks", {}).items():
            ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("pass@"))
            shown = ["pass@1", f"pass@{ks[-1]}" if ks and ks[-1] > 1 else None, *SHOWN[1:]]
            row = {k: metrics[k] for k in shown if k and k in metrics}
            heldout = summary.get("heldout_entropy") or {}
            if "entropy" in heldout:
                row["heldout_entropy"] = heldout["entropy"]
            for key in row:
                if key not in columns:
                    columns.append(key)
            flat = flatten_metrics(row)
            rows.append([tag, bench, *[flat.get(c, "") for c in columns]])
    width = 2 + len(columns)
    return columns, [r + [""] * (width - len(r)) for r in rows]


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """Scalar metrics as display strings, nested dicts joined with '/'."""
    flat: dict[str, str] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, v in flatten_metrics(value).items():
                flat[f"{key}/{sub}"] = v
        elif isinstance(value, float):
            flat[key] = f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
        elif isinstance(value, (int, str, bool)):
            flat[key] = str(value)
    return flat


def objective_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The sweep objective: `cfg.objective` averaged over benchmarks, trained model if any."""
    summary = results.get("trained") or results.get("base")
    if not summary:
        return None
    value = summary.get("average", {}).get(cfg.objective)
    return float(value) if value is not None else None


def write_final_report(
    cfg: DictConfig, artifacts: list[Artifact], results: dict[str, Any], out_dir: Path
) -> float | None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    stages = Table(title="stages")
    for col in ("stage", f"artifact (under {cfg.paths.artifacts_dir})", "status"):
        stages.add_column(col)
    for art in artifacts:
        status = "reused" if art.reused else f"built in {art.seconds:.1f}s"
        stages.add_row(art.stage, f"{art.stage}/{art.key}", status)
    console.print(stages)

    columns, rows = _metric_rows(results)
    table = Table(title=f"evaluation — {cfg.task_name}")
    for col in ("model", "benchmark", *columns):
        header = SHORT.get(col, col)
        table.add_column(header, justify="right" if col not in ("model", "benchmark") else "left")
    for row in rows:
        table.add_row(*row)
    if rows:
        console.print(table)

    header = ["model", "benchmark", *columns]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    write_text("\n".join(md) + "\n", out_dir / "results.md")
    objective = objective_value(cfg, results)
    write_json(
        {
            "task_name": cfg.task_name,
            "objective": {"name": cfg.objective, "value": objective},
            "results": results,
            "artifacts": {f"{a.stage}:{a.key}": str(a.path) for a in artifacts},
            "overrides": OmegaConf.to_container(cfg, resolve=False).get("stages"),
        },
        out_dir / "results.json",
    )
    console.print(f"results: {out_dir / 'results.md'}")
    return objective
