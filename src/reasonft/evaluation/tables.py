"""The evaluation's files: the results as strict JSON, a Markdown table and a pass@k plot."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reasonft.evaluation.metrics import BY_GRADER
from reasonft.io import atomic_path, write_json, write_text

RESULTS_JSON = "eval_results.json"
RESULTS_MD = "eval_results.md"
PASSK_PNG = "pass_at_k.png"
SAMPLES_DIR = "samples"


def json_safe(value: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(results: Mapping[str, Any]) -> str:
    """One row per benchmark and the average: pass@k columns, any-correct, lengths, entropy."""
    per = results["benchmarks"]
    pass_keys = sorted(
        {k for m in per.values() for k in m if k.startswith("pass@")}, key=lambda k: int(k[5:])
    )
    by_grader = sorted({k for m in per.values() for k in m if k.endswith(BY_GRADER)})
    optional = [k for k in ("no_think_share", "grader_disagreements") if any(k in m for m in per.values())]
    columns = ["problems", "n", *pass_keys, *by_grader, "any_correct", "mean_tokens",
               "median_tokens", "no_answer_share", *optional, "truncated_share", "entropy"]
    lines = [
        f"# Evaluation{' — ' + results['tag'] if results.get('tag') else ''}",
        "",
        "| benchmark | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, m in per.items():
        values = [m.get("problems"), m.get("samples_per_problem"), *[m.get(k) for k in columns[2:]]]
        lines.append(f"| {name} | " + " | ".join(_fmt(v, 1 if "tokens" in c else 4) for c, v in zip(columns, values)) + " |")
    avg = results["average"]
    values = ["", "", *[avg.get(k) for k in columns[2:]]]
    lines.append("| **average** | " + " | ".join(_fmt(v, 1 if "tokens" in c else 4) for c, v in zip(columns, values)) + " |")
    heldout = results.get("heldout_entropy")
    lines.append("")
    if heldout:
        lines.append(
            f"Held-out entropy (teacher-forced): {_fmt(heldout.get('entropy'))} nats over "
            f"{heldout.get('tokens')} tokens of {heldout.get('responses')} responses."
        )
    lines.append(
        "Pass@1 = mean correctness over all samples; pass@k = unbiased estimator (Chen et al. 2021); "
        "any_correct = share of problems with a correct sample among all n; entropy in nats "
        "(policy at temperature 1 on its own samples)."
    )
    if by_grader:
        lines.append(
            f"Graders compared on the same samples: {', '.join(by_grader)}; pass@1 and pass@k use "
            f"the primary grader ({results.get('settings', {}).get('grader')}); grader_disagreements "
            "= samples one grader marks correct and the other not."
        )
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(results: Mapping[str, Any], path: Path) -> Path:
    """pass@k against k (log2 axis), one line per benchmark; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ticks: set[int] = set()
    for name, m in results["benchmarks"].items():
        points = sorted((int(k[5:]), v) for k, v in m.items() if k.startswith("pass@") and v is not None)
        if points:
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=name)
            ticks.update(k for k, _ in points)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"pass@k{' — ' + results['tag'] if results.get('tag') else ''}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_results(results: Mapping[str, Any], out_dir: Path) -> Path:
    """`eval_results.json`, `eval_results.md` and `pass_at_k.png` in `out_dir`; returns the plot."""
    write_json(results, out_dir / RESULTS_JSON)
    write_text(markdown_table(results), out_dir / RESULTS_MD)
    return plot_pass_at_k(results, out_dir / PASSK_PNG)
