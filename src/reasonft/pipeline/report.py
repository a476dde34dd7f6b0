"""The run's final table: what each stage did and the evaluation before and after fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reasonft.evaluation.comparison_plot import COMPARISON_PNG, before_after_curves, plot_comparison
from reasonft.io import write_json, write_text
from reasonft.pipeline.artifacts import Artifact
from reasonft.selection.teacher_rank import TeacherRanking

SHORT = {
    "any_correct": "any",
    "entropy": "H(own)",
    "heldout_entropy": "H(held)",
    "mean_tokens": "tokens",
    "no_answer_share": "no ans",
}
SHOWN = ("pass@1", "any_correct", "entropy", "mean_tokens", "no_answer_share")


def _metric_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows of (model, benchmark, key metrics); the full set stays in results.json.
    Columns: pass@1, the largest pass@k of any benchmark, then the other metrics in SHOWN order."""
    found: list[tuple[str, str, dict[str, str]]] = []
    for tag, summary in results.items():
        heldout = summary.get("heldout_entropy") or {}
        for bench, metrics in summary.get("benchmarks", {}).items():
            ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("pass@"))
            shown = ["pass@1", f"pass@{ks[-1]}" if ks and ks[-1] > 1 else None, *SHOWN[1:]]
            row = {k: metrics[k] for k in shown if k and k in metrics}
            if "entropy" in heldout:
                row["heldout_entropy"] = heldout["entropy"]
            found.append((tag, bench, flatten_metrics(row)))
    present = {key for _, _, flat in found for key in flat}
    passes = sorted((k for k in present if k.startswith("pass@")), key=lambda k: int(k[5:]))
    columns = passes + [k for k in (*SHOWN[1:], "heldout_entropy") if k in present]
    return columns, [[tag, bench, *[flat.get(c, "") for c in columns]] for tag, bench, flat in found]


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


def before_after(results: dict[str, Any], metric: str = "pass@1") -> list[str]:
    """One line per benchmark evaluated before and after fine-tuning: `metric` base -> trained."""
    base = (results.get("base") or {}).get("benchmarks", {})
    trained = (results.get("trained") or {}).get("benchmarks", {})
    lines = []
    for bench, metrics in trained.items():
        before, after = base.get(bench, {}).get(metric), metrics.get(metric)
        if before is None or after is None:
            continue
        lines.append(f"{bench} {metric}: base {before:.3f} -> trained {after:.3f} ({after - before:+.3f})")
    return lines


def objective_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The sweep objective of the trained model (the base one without training): a metric
    averaged over benchmarks (`pass@1`) or one benchmark's (`toy_test/pass@1`)."""
    summary = results.get("trained") or results.get("base")
    if not summary:
        return None
    name = str(cfg.objective)
    if "/" in name:
        bench, metric = name.split("/", 1)
        known = summary.get("benchmarks", {})
        if bench not in known:
            raise ValueError(f"objective={name}: no benchmark {bench!r}; evaluated: {sorted(known)}")
        value = known[bench].get(metric)
    else:
        value = summary.get("average", {}).get(name)
    return float(value) if value is not None else None


def task_overrides() -> list[str]:
    """The command-line overrides of this run (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []


def recipe_title(cfg: DictConfig) -> str:
    """The recipe that ran: its task name, the experiment preset and the command-line overrides
    (list values included: `stages=[base,verify]`)."""
    from hydra.core.hydra_config import HydraConfig

    title = str(cfg.task_name)
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("experiment")
        overrides = [o for o in task_overrides() if not o.startswith("experiment=")]
        title += f" (experiment={choice})" if choice and choice != cfg.task_name else ""
        title += f" {' '.join(overrides)}" if overrides else ""
    return title


def stage_notes(stage: str, summary: dict[str, Any]) -> str:
    """One line of what a stage's report says (counts, skips, shortfalls)."""
    keys = {
        "generate": ("samples", "problems"),
        "verify": ("records", "accuracy", "status"),
        "score": ("records", "method", "truncated", "dropped"),
        "select": ("n_pool", "n_selected", "n_by_loss_type", "shortfall"),
        "train": ("model",),
        "rl": ("steps", "resumed_from", "processes", "reward_status", "dropped_overlong_prompts"),
    }.get(stage, ())
    parts = []
    for k in keys:
        value = summary.get(k)
        if value in (None, {}, []):
            continue
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{a}: {b}" for a, b in value.items() if b) + "}"
        elif isinstance(value, float):
            value = f"{value:.3f}"
        parts.append(f"{k}={value}")
    return ", ".join(parts)


def skipped_lines(summaries: list[tuple[Artifact, dict[str, Any]]]) -> list[str]:
    """One line per file whose bad records were skipped, with the count by reason."""
    lines = []
    for art, summary in summaries:
        data = summary.get("data") or {}
        for path, reasons in (data.get("skipped_by_file") or {}).items():
            counts = ", ".join(f"{reason} {info['count']}" for reason, info in reasons.items())
            lines.append(f"{art.stage}: skipped records in {path}: {counts}")
    return lines


def ranking_markdown(summary: dict[str, Any]) -> list[str]:
    """The teacher ranking of a select artifact as the ranker writes it, one heading level down
    (empty when the artifact is not a ranking)."""
    table = summary.get("teacher_ranking")
    if not table:
        return []
    report = {k: v for k, v in summary.items() if k != "teacher_ranking"}
    text = TeacherRanking(table=table, report=report).to_markdown()
    return [f"#{line}" if line.startswith("#") else line for line in text.splitlines()] + [""]

def write_final_report(
    cfg: DictConfig,
    plan: Any,
    artifacts: list[Artifact],
    results: dict[str, Any],
    out_dir: Path,
    shown: list[Path] | None = None,
) -> float | None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    title = recipe_title(cfg)
    # escaped: rich would read `stages=[base,verify]` as markup and print `stages=`
    console.print(f"[bold]{escape(title)}[/bold]  plan: {escape(plan.describe())}")
    stages = Table(title="stages")
    for col in ("stage", f"artifact (under {cfg.paths.artifacts_dir})", "status", "report"):
        stages.add_column(col)
    summaries = [(art, art.meta()["summary"]) for art in artifacts]
    for art, summary in summaries:
        status = "reused" if art.reused else f"built in {art.seconds:.1f}s"
        stages.add_row(art.stage, f"{art.stage}/{art.key}", status, stage_notes(art.stage, summary))
    console.print(stages)
    skipped = skipped_lines(summaries)
    for line in skipped:
        console.print(f"[yellow]{escape(line)}[/yellow]")

    md = [f"# {title}", "", f"plan: {plan.describe()}", ""]
    if skipped:
        md += [f"- {line}" for line in skipped] + [""]
    for art, summary in summaries:
        ranking = ranking_markdown(summary) if art.stage == "rank" else []
        if ranking:
            for line in ranking:
                console.print(escape(line))
            md += ranking

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
        md += ["## Evaluation", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
    changes = before_after(results)
    for line in changes:
        console.print(escape(line))
    if changes:
        md += ["", *[f"- {line}" for line in changes]]
    md += ["", "## Stages", ""]
    md += [f"- {art.stage} `{art.path}` ({'reused' if art.reused else 'built'}): "
           f"{stage_notes(art.stage, summary)}" for art, summary in summaries]
    if results:
        # Base and fine-tuned student on one set of axes (the artifacts' plots show one each).
        curves, arrows = before_after_curves(results)
        shown = [*(shown or []), plot_comparison(
            curves, out_dir / COMPARISON_PNG, f"{title}: {' and '.join(results)}", arrows=arrows)]
    if shown:
        md += ["", "## Files", "", *[f"- {p.relative_to(out_dir)}" for p in shown]]
    write_text("\n".join(md) + "\n", out_dir / "results.md")
    objective = objective_value(cfg, results)
    write_json(
        {
            "task_name": cfg.task_name,
            "recipe": title,
            "overrides": task_overrides(),
            "plan": list(plan.stages),
            "objective": {"name": cfg.objective, "value": objective},
            "before_after": changes,
            "results": results,
            "stages": {f"{a.stage}:{a.key}": {"path": str(a.path), "reused": a.reused, "report": s}
                       for a, s in summaries},
            "files": [str(p) for p in shown or []],
        },
        out_dir / "results.json",
    )
    if shown:
        console.print(escape("files: " + ", ".join(str(p.relative_to(out_dir)) for p in shown)))
    console.print(escape(f"results: {out_dir / 'results.md'}"))
    return objective
