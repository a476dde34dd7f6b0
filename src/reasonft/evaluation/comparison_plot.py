"""One figure that compares models: their pass@k curves on one set of axes (left) and, beside
it, each model's entropy on its own samples against its Pass@1 (right), so a recipe that
explores more (higher entropy) at the same accuracy sits to the right of another.

Used for a run's base and fine-tuned student (`comparison.png` in the run folder) and for every
job of a sweep (`comparison.png` at the sweep's root, `reasonft.compare`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from reasonft.io import atomic_path

COMPARISON_PNG = "comparison.png"


@dataclass
class Curve:
    """One model (or one model on one benchmark): `points` k -> pass@k; `pass1` and `entropy`
    place it on the right panel. Curves with the same `color` index share a colour (a recipe
    across seeds, a benchmark before and after fine-tuning); `dashed` marks a reference (the
    base student)."""

    label: str
    points: Mapping[int, float]
    pass1: float | None
    entropy: float | None
    color: int = 0
    dashed: bool = False
    legend: bool = True


def plot_comparison(
    curves: Sequence[Curve],
    path: str | Path,
    title: str,
    arrows: Sequence[tuple[int, int]] = (),
) -> Path:
    """Write the two-panel comparison to `path` (PNG, atomically). `arrows` joins curve i to
    curve j on the right panel (base -> trained)."""
    fig = Figure(figsize=(11.5, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    palette = [f"C{i}" for i in range(10)]
    ticks: set[int] = set()
    for curve in curves:
        color = "black" if curve.dashed and curve.color < 0 else palette[curve.color % 10]
        style = "--" if curve.dashed else "-"
        label = curve.label if curve.legend else None
        points = sorted((k, v) for k, v in curve.points.items() if v is not None)
        if points:
            left.plot([k for k, _ in points], [v for _, v in points], style, marker="o",
                      color=color, label=label, alpha=0.9)
            ticks.update(k for k, _ in points)
        if curve.pass1 is not None and curve.entropy is not None:
            right.scatter([curve.entropy], [curve.pass1], color=color,
                          marker="s" if curve.dashed else "o", s=36,
                          facecolors="none" if curve.dashed else color)
    for i, j in arrows:
        a, b = curves[i], curves[j]
        if None in (a.entropy, a.pass1, b.entropy, b.pass1):
            continue
        right.annotate("", xy=(b.entropy, b.pass1), xytext=(a.entropy, a.pass1),
                       arrowprops={"arrowstyle": "->", "color": "gray", "lw": 0.8})
    if ticks:
        left.set_xscale("log", base=2)
        left.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
    left.set_xlabel("k")
    left.set_ylabel("pass@k")
    left.grid(True, alpha=0.3)
    left.set_title("pass@k")
    right.set_xlabel("entropy on its own samples (nats/token)")
    right.set_ylabel("Pass@1")
    right.grid(True, alpha=0.3)
    right.set_title("Pass@1 against entropy")
    if any(c.legend for c in curves):
        left.legend(fontsize="small", loc="lower right")
    fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def before_after_curves(results: Mapping[str, Mapping]) -> tuple[list[Curve], list[tuple[int, int]]]:
    """The curves of a run's evaluations (`{"base": summary, "trained": summary}`): one colour
    per benchmark, the base student dashed, an arrow from each benchmark's base to its trained
    point."""
    curves: list[Curve] = []
    arrows: list[tuple[int, int]] = []
    names: list[str] = []
    for summary in results.values():
        names += [n for n in (summary.get("benchmarks") or {}) if n not in names]
    for color, name in enumerate(names):
        index: dict[str, int] = {}
        for tag, summary in results.items():
            metrics = (summary.get("benchmarks") or {}).get(name)
            if metrics is None:
                continue
            points = {int(k[5:]): v for k, v in metrics.items() if k.startswith("pass@") and v is not None}
            index[tag] = len(curves)
            curves.append(Curve(f"{name} — {tag}", points, metrics.get("pass@1"),
                                metrics.get("entropy"), color=color, dashed=tag == "base"))
        if "base" in index and "trained" in index:
            arrows.append((index["base"], index["trained"]))
    return curves, arrows
