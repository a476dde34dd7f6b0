"""Teacher ranking by LALP (METHODS.md §2b): which teacher's correct responses suit this student?

Choices made here:
- Only verified-correct responses count (`only_correct`), as in the paper.
- Prompt sample: with `common_prompts` (default) the `n_prompts` prompts are drawn, seeded, from
  the prompts that EVERY ranked teacher answered correctly at least once, so every teacher is
  scored on the same problems and a teacher is never favoured by answering only easy ones. The
  comparison is then paired, and the bootstrap resamples prompts jointly for all teachers. With
  `common_prompts=False` prompts are drawn from those any teacher answered, and each teacher is
  averaged over the sampled prompts it answered.
- A teacher with several correct responses to a prompt contributes their mean for that prompt;
  a teacher's score is the mean of its per-prompt scores (every prompt weighs the same).
- Confidence intervals: percentile bootstrap over prompts (`n_bootstrap` resamples, seeded).
  `rank_stability` is the share of resamples whose teacher order equals the point-estimate order.

The ranker selects no records: it returns a `TeacherRanking` (table + report) that `write(out_dir)`
saves as JSON, Markdown and a bar plot. In the pipeline it is the `rank` stage (`stages=[rank,report]`,
configured by `rank=teacher`); its artifact is the ranking, and the chosen teacher is then fed to
`select=single_teacher select.teacher=<name>` (or used to restrict `sources` of another selector).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from matplotlib.figure import Figure

from reasonft.data.records import as_dataset
from reasonft.io import atomic_path, write_json, write_text
from reasonft.selection.base import as_names, check_required_columns, filter_pool, read_frame

BOOTSTRAP_CHUNK = 256


@dataclass
class TeacherRanking:
    """One row per teacher (best first by the first metric) and a report of how it was measured."""

    table: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        metrics = self.report["metrics"]
        level = round(100 * self.report["confidence"])
        head = ["teacher", "prompts", "responses"]
        for m in metrics:
            head += [f"mean {m.upper()}", f"{level}% CI", f"rank {m.upper()}"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.table:
            cells = [str(row["source"]), str(row["n_prompts"]), str(row["n_responses"])]
            for m in metrics:
                cells += [
                    f"{row[f'mean_{m}']:.4f}",
                    f"[{row[f'ci_low_{m}']:.4f}, {row[f'ci_high_{m}']:.4f}]",
                    str(row[f"rank_{m}"]),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        r = self.report
        stability = ", ".join(f"{m.upper()} {r['rank_stability'][m]:.2f}" for m in metrics)
        notes = [
            "# Teacher ranking",
            "",
            (
                f"{r['n_prompts_used']} prompts (asked {r['n_prompts']}, eligible "
                f"{r['n_prompts_eligible']}, common to all teachers: {r['common_prompts']}), "
                f"{r['n_bootstrap']} bootstrap resamples, seed {r['seed']}. Rank stability (share "
                f"of resamples with the same order): {stability}."
            ),
            "",
        ]
        return "\n".join(notes + lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Bar plot, teachers on x, one bar per metric side by side, percentile-CI error bars."""
        metrics = self.report["metrics"]
        names = [row["source"] for row in self.table]
        x = np.arange(len(names))
        width = 0.8 / len(metrics)
        fig = Figure(figsize=(max(4.0, 1.6 * len(names) + 1.5), 3.8), layout="constrained")
        ax = fig.subplots()
        for i, m in enumerate(metrics):
            means = np.array([row[f"mean_{m}"] for row in self.table])
            low = np.array([row[f"ci_low_{m}"] for row in self.table])
            high = np.array([row[f"ci_high_{m}"] for row in self.table])
            ax.bar(
                x + (i - (len(metrics) - 1) / 2) * width,
                means,
                width,
                yerr=np.vstack([means - low, high - means]),
                capsize=4,
                label=m.upper(),
            )
        ax.set_xticks(x, names)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_ylabel("mean log-probability per token")
        level = round(100 * self.report["confidence"])
        ax.set_title(f"Teachers ranked by {metrics[0].upper()} ({level}% bootstrap CI)")
        fig.legend(loc="outside right upper")
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return path

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """teacher_ranking.json / .md / .png under `out_dir`, each written atomically."""
        out = Path(out_dir)
        return {
            "json": write_json(
                {"table": self.table, "report": self.report}, out / "teacher_ranking.json"
            ),
            "markdown": write_text(self.to_markdown(), out / "teacher_ranking.md"),
            "png": self.plot(out / "teacher_ranking.png"),
        }


class TeacherRanker:
    """Rank teachers (record `source`) by mean LALP, with GALP side by side and bootstrap CIs."""

    name = "teacher"  # rank=teacher

    def __init__(
        self,
        n_prompts: int = 200,
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        metrics: Sequence[str] = ("lalp", "galp"),
        common_prompts: bool = True,
        only_correct: bool = True,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] | None = ("self",),
        seed: int = 42,
    ) -> None:
        if int(n_prompts) < 1 or int(n_bootstrap) < 1:
            raise ValueError(
                f"rank=teacher: n_prompts and n_bootstrap must be >= 1, got {n_prompts}, {n_bootstrap}"
            )
        if not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"rank=teacher: confidence must be in (0, 1), got {confidence}")
        self.metrics = as_names(metrics) or []
        if not self.metrics:
            raise ValueError(
                "rank=teacher: `metrics` must name at least one score column, e.g. [lalp, galp]"
            )
        self.n_prompts = int(n_prompts)
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.common_prompts = bool(common_prompts)
        self.only_correct = bool(only_correct)
        self.sources = as_names(sources)
        self.exclude_sources = as_names(exclude_sources)
        self.seed = int(seed)

    @property
    def reads_self_samples(self) -> bool:
        return self.sources is not None and "self" in self.sources

    @property
    def requires(self) -> frozenset[str]:
        """The ranked metrics, and `correct` when only verified responses count."""
        return frozenset({*self.metrics, *(["correct"] if self.only_correct else [])})

    def __call__(self, ds: datasets.Dataset | list[dict[str, Any]]) -> TeacherRanking:
        ds = as_dataset(ds)
        stage = f"rank[{self.name}]"
        check_required_columns(ds, self.requires, self.name, group="rank")
        frame = read_frame(ds, [*self.metrics, *(["correct"] if self.only_correct else [])], stage)
        skipped: dict[str, int] = {}
        keep = filter_pool(
            frame,
            skipped,
            sources=self.sources,
            exclude_sources=self.exclude_sources,
            correctness="correct" if self.only_correct else None,
            score_columns=self.metrics,
        )
        pool = frame[keep]
        if pool.empty:
            raise ValueError(
                f"{stage}: no record left to rank after filtering (skipped: {skipped})"
            )
        pool = pool.assign(source=pool["source"].astype(str))
        teachers = sorted(pool["source"].unique().tolist())
        per_prompt = pool.groupby(["prompt_id", "source"])[self.metrics].mean()
        responses = pool.groupby(["prompt_id", "source"]).size()

        answered = per_prompt[self.metrics[0]].unstack("source").reindex(columns=teachers)
        if self.common_prompts:
            eligible = answered.index[answered.notna().all(axis=1)]
        else:
            eligible = answered.index
        if len(eligible) == 0:
            raise ValueError(
                f"{stage}: no prompt was answered correctly by every teacher {teachers}; "
                f"set common_prompts=false or rank fewer teachers (sources=[...])"
            )
        rng = np.random.default_rng(self.seed)
        eligible = np.array(sorted(eligible.tolist(), key=str), dtype=object)
        n_used = min(self.n_prompts, len(eligible))
        sampled = eligible[np.sort(rng.choice(len(eligible), size=n_used, replace=False))]

        matrices = {
            m: per_prompt[m]
            .unstack("source")
            .reindex(index=sampled, columns=teachers)
            .to_numpy(float)
            for m in self.metrics
        }
        counts = responses.unstack("source").reindex(index=sampled, columns=teachers).fillna(0)
        table, stability = self.rank(teachers, matrices, counts.to_numpy(int), rng)
        report = {
            "ranker": self.name,
            "metrics": self.metrics,
            "teachers": teachers,
            "n_prompts": self.n_prompts,
            "n_prompts_eligible": len(eligible),
            "n_prompts_used": n_used,
            "prompt_shortfall": self.n_prompts - n_used,
            "common_prompts": self.common_prompts,
            "only_correct": self.only_correct,
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
            "seed": self.seed,
            "rank_stability": stability,
            "orders_agree": all(
                row[f"rank_{m}"] == row[f"rank_{self.metrics[0]}"]
                for row in table
                for m in self.metrics
            ),
            "n_pool": len(ds),
            "skipped": skipped,
            "sampled_prompt_ids": [p.item() if hasattr(p, "item") else p for p in sampled],
        }
        return TeacherRanking(table=table, report=report)

    def rank(
        self,
        teachers: list[str],
        matrices: dict[str, np.ndarray],
        counts: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Point means, bootstrap CIs and ranks per metric; rows ordered by the first metric's rank."""
        n_prompts = counts.shape[0]
        resamples = rng.integers(0, n_prompts, size=(self.n_bootstrap, n_prompts))
        alpha = 100.0 * (1.0 - self.confidence) / 2.0
        rows = [
            {
                "source": t,
                "n_prompts": int((counts[:, j] > 0).sum()),
                "n_responses": int(counts[:, j].sum()),
            }
            for j, t in enumerate(teachers)
        ]
        stability: dict[str, float] = {}
        for m, values in matrices.items():
            means = np.nanmean(values, axis=0)
            boot = bootstrap_means(values, resamples)
            low, high = np.nanpercentile(boot, [alpha, 100.0 - alpha], axis=0)
            order = ranking(means)
            stability[m] = float(np.mean([np.array_equal(ranking(b), order) for b in boot]))
            for j, row in enumerate(rows):
                row[f"mean_{m}"] = float(means[j])
                row[f"ci_low_{m}"] = float(low[j])
                row[f"ci_high_{m}"] = float(high[j])
                row[f"rank_{m}"] = int(np.flatnonzero(order == j)[0]) + 1
        rows.sort(key=lambda r: r[f"rank_{self.metrics[0]}"])
        return rows, stability


def ranking(means: np.ndarray) -> np.ndarray:
    """Column indices best first: highest mean first, NaN last, equal means by column index
    (teachers are sorted by name, so by name)."""
    keyed = np.where(np.isfinite(means), -means, np.inf)
    return np.lexsort((np.arange(len(means)), keyed))


def bootstrap_means(values: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Per-resample mean over resampled prompts of each column, ignoring NaN cells. [B, T]."""
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    out = np.empty((resamples.shape[0], values.shape[1]))
    n_prompts = values.shape[0]
    for start in range(0, resamples.shape[0], BOOTSTRAP_CHUNK):
        chunk = resamples[start : start + BOOTSTRAP_CHUNK]
        # weights[b, p] = how often prompt p is drawn in resample b.
        weights = np.zeros((len(chunk), n_prompts))
        np.add.at(weights, (np.arange(len(chunk))[:, None], chunk), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + len(chunk)] = (weights @ filled) / (weights @ present)
    return out
