"""RL curves: one run's (`rl_curves.png`, in the rl artifact) or several runs' on shared axes
(`rl_comparison.png`, e.g. the runs of a multirun: `python -m reasonft.rl.plots OUT RUN...`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PANELS = (
    ("reward", "mean reward (rollouts)"),
    ("entropy", "policy entropy (rollouts)"),
    ("response_length", "response length (tokens)"),
    ("kl", "KL to the start (k3)"),
    ("clip_fraction", "clip fraction"),
    ("val/pass@1", "validation Pass@1"),
    ("val/pass@k", "validation Pass@k (largest k)"),
    ("val/entropy", "validation entropy (own samples)"),
)


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; `val/pass@k` is the largest k logged."""
    if key == "val/pass@k":
        ks = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith("val/pass@")})
        if len(ks) < 2:
            return [], []
        key = f"val/pass@{ks[-1]}"
    points = [(int(r["step"]), float(r[key])) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def read_history(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_runs(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str = "") -> Path:
    """One panel per metric of PANELS, one line per run (label -> history rows), shared x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), sharex=True)
    for ax, (key, label) in zip(axes.flat, PANELS, strict=True):
        for run, rows in histories.items():
            steps, values = series(rows, key)
            if steps:
                ax.plot(steps, values, marker="o" if key.startswith("val/") else None, ms=3, label=run)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("optimiser step")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(histories) > 1 and handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle(title or "GRPO", fontsize=12)
    fig.tight_layout(rect=(0, 0.06 if len(histories) > 1 else 0, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw several rl runs' curves on shared axes.")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("runs", nargs="+", help="history.jsonl files or rl artifact folders, as LABEL=PATH or PATH")
    args = parser.parse_args(argv)
    histories = {}
    for item in args.runs:
        label, _, path = item.rpartition("=")
        target = Path(path)
        if target.is_dir():
            target = target / "history.jsonl"
        histories[label or target.parent.name] = read_history(target)
    print(plot_runs(histories, args.out, title="GRPO runs"))


if __name__ == "__main__":
    main()
