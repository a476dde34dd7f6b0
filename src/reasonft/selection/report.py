"""The selection report: what was selected from which pool, and what could not be filled.

`selection_report` counts per source, per PPL bin (pool vs selected), per loss type and lists
every shortfall found in the selector's report (nested parts such as OXA's promote/suppress
included). `write_report` saves it as JSON + Markdown and the pool-vs-selection PPL histograms as
PNG, each atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reasonft.data.records import as_dataset
from reasonft.io import atomic_path, write_json, write_text
from reasonft.selection.base import Selection

DEFAULT_PPL_BINS = 40


def find_bin_edges(report: Mapping[str, Any]) -> list[float] | None:
    """The first `bin_edges` in a selector report (OXA keeps them under `promote`)."""
    if "bin_edges" in report:
        return list(report["bin_edges"])
    for value in report.values():
        if isinstance(value, Mapping):
            edges = find_bin_edges(value)
            if edges is not None:
                return edges
    return None


def find_quotas(report: Mapping[str, Any]) -> list[int] | None:
    """Per-bin quotas of the first Gaussian part of a selector report."""
    if "bins" in report and isinstance(report["bins"], list):
        return [b["quota"] for b in report["bins"]]
    for value in report.values():
        if isinstance(value, Mapping):
            quotas = find_quotas(value)
            if quotas is not None:
                return quotas
    return None


def collect_shortfalls(report: Mapping[str, Any], part: str = "") -> list[dict[str, Any]]:
    """Every part of a (possibly nested) selector report that delivered less than it was asked."""
    found: list[dict[str, Any]] = []
    name = part or str(report.get("selector", "selection"))
    if report.get("n") is not None and report.get("shortfall"):
        entry = {"part": name, "n": report["n"], "shortfall": report["shortfall"]}
        if isinstance(report.get("bins"), list):
            entry["short_bins"] = [b for b in report["bins"] if b["shortfall"] > 0]
            entry["too_few_candidates"] = report.get("shortfall_too_few_candidates")
            entry["per_prompt_cap"] = report.get("shortfall_per_prompt_cap")
        found.append(entry)
    for key, value in report.items():
        if isinstance(value, Mapping) and "selector" in value:
            found.extend(collect_shortfalls(value, f"{name}.{key}"))
    return found


def collect_skipped(report: Mapping[str, Any], part: str = "") -> dict[str, dict[str, int]]:
    """The `skipped` counts (reason -> records) of every part of a (possibly nested) report."""
    name = part or str(report.get("selector", "selection"))
    found = {name: dict(report["skipped"])} if isinstance(report.get("skipped"), Mapping) else {}
    for key, value in report.items():
        if isinstance(value, Mapping) and "selector" in value:
            found.update(collect_skipped(value, f"{name}.{key}"))
    return found


def _ppl(ds: datasets.Dataset) -> np.ndarray | None:
    if "ppl" not in ds.column_names:
        return None
    return pd.to_numeric(ds.select_columns(["ppl"]).to_pandas()["ppl"], errors="coerce").to_numpy(
        float
    )


def _counts_by(ds: datasets.Dataset, column: str) -> dict[str, int]:
    if column not in ds.column_names or len(ds) == 0:
        return {}
    values = ds.select_columns([column]).to_pandas()[column].astype(str)
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def ppl_edges(report: Mapping[str, Any], pool_ppl: np.ndarray | None) -> np.ndarray | None:
    """The selector's own bin edges, or equal-width bins over the pool's finite PPL range."""
    edges = find_bin_edges(report)
    if edges is not None:
        return np.asarray(edges, dtype=float)
    if pool_ppl is None:
        return None
    finite = pool_ppl[np.isfinite(pool_ppl)]
    if len(finite) == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    return np.linspace(lo, hi if hi > lo else lo + 1.0, DEFAULT_PPL_BINS + 1)


def bin_counts(ppl: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    """Counts per [lo, hi) bin (last bin closed), plus below / above / missing."""
    finite = ppl[np.isfinite(ppl)]
    inside = finite[(finite >= edges[0]) & (finite <= edges[-1])]
    idx = np.clip(np.searchsorted(edges, inside, side="right") - 1, 0, len(edges) - 2)
    return {
        "counts": np.bincount(idx, minlength=len(edges) - 1).tolist(),
        "below": int((finite < edges[0]).sum()),
        "above": int((finite > edges[-1]).sum()),
        "missing": int(len(ppl) - len(finite)),
    }


def selection_report(
    selection: Selection, pool: datasets.Dataset | list[dict[str, Any]]
) -> dict[str, Any]:
    """Counts per source, per loss type and per PPL bin (pool vs selected), and all shortfalls."""
    pool = as_dataset(pool)
    selected = selection.records
    by_source_pool = _counts_by(pool, "source")
    by_source_sel = _counts_by(selected, "source")
    sources = sorted(set(by_source_pool) | set(by_source_sel))
    out: dict[str, Any] = {
        "selector": selection.report.get("selector"),
        "n_pool": len(pool),
        "n_selected": len(selected),
        "by_source": [
            {"source": s, "pool": by_source_pool.get(s, 0), "selected": by_source_sel.get(s, 0)}
            for s in sources
        ],
        "by_loss_type": _counts_by(selected, "loss_type"),
        "skipped": collect_skipped(selection.report),
        "shortfalls": collect_shortfalls(selection.report),
        "total_shortfall": int(selection.report.get("shortfall", 0) or 0),
    }
    pool_ppl, sel_ppl = _ppl(pool), _ppl(selected)
    edges = ppl_edges(selection.report, pool_ppl)
    if edges is not None and pool_ppl is not None and sel_ppl is not None:
        pool_bins, sel_bins = bin_counts(pool_ppl, edges), bin_counts(sel_ppl, edges)
        out["by_ppl_bin"] = [
            {
                "lo": float(edges[i]),
                "hi": float(edges[i + 1]),
                "pool": pool_bins["counts"][i],
                "selected": sel_bins["counts"][i],
            }
            for i in range(len(edges) - 1)
        ]
        out["ppl_outside_bins"] = {
            "pool": {k: pool_bins[k] for k in ("below", "above", "missing")},
            "selected": {k: sel_bins[k] for k in ("below", "above", "missing")},
        }
    else:
        out["by_ppl_bin"] = None
        out["ppl_outside_bins"] = "no `ppl` column; PPL bins not counted"
    out["selector_report"] = selection.report
    return out


def plot_ppl_histograms(
    pool_ppl: Sequence[float] | np.ndarray,
    selected_ppl: Sequence[float] | np.ndarray | Mapping[str, Sequence[float]],
    path: str | Path,
    bin_edges: Sequence[float] | np.ndarray | None = None,
    quotas: Sequence[int] | None = None,
    title: str = "PPL under the base student: pool vs selection",
) -> Path:
    """The selection drawn over the pool it came from, on one PPL axis (top: the pool in grey,
    each selected group over it, the Gaussian quota as a line), and beside it the share of each
    bin's pool that was selected (bottom), so what a window took and left is read off directly.

    `selected_ppl` may map a label (e.g. loss type) to values; each label gets its own histogram.
    With `quotas` (one per bin of `bin_edges`), the Gaussian target is drawn over the selection.
    """
    pool = np.asarray(pool_ppl, dtype=float)
    pool = pool[np.isfinite(pool)]
    groups = dict(selected_ppl) if isinstance(selected_ppl, Mapping) else {"selected": selected_ppl}
    groups = {k: np.asarray(v, dtype=float) for k, v in groups.items()}
    groups = {k: v[np.isfinite(v)] for k, v in groups.items()}
    if bin_edges is None:
        values = np.concatenate([pool, *groups.values()]) if len(pool) or groups else np.array([])
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, DEFAULT_PPL_BINS + 1)
    else:
        edges = np.asarray(bin_edges, dtype=float)

    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    pool_counts, _, _ = top.hist(pool, bins=edges, color="lightgray", label=f"pool (n={len(pool)})")
    selected_counts = np.zeros(len(edges) - 1)
    for n, (label, values) in enumerate(groups.items()):
        counts, _ = np.histogram(values, bins=edges)
        top.stairs(counts, edges, color=f"C{n}", fill=True, alpha=0.6, label=f"{label} (n={len(values)})")
        selected_counts += counts
    if quotas is not None:
        top.stairs(np.asarray(quotas, dtype=float), edges, color="black", label="Gaussian quota")
    top.set_ylabel("records")
    top.set_title(title)
    top.legend(fontsize="small")
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(pool_counts > 0, selected_counts / np.maximum(pool_counts, 1), np.nan)
    bottom.stairs(np.nan_to_num(share), edges, color="C3")
    bottom.set_ylim(0, 1.05)
    bottom.set_xlabel("PPL")
    bottom.set_ylabel("share of the bin selected")
    bottom.grid(True, alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def to_markdown(summary: Mapping[str, Any]) -> str:
    """The selection report as Markdown tables."""
    lines = [
        f"# Selection report: {summary['selector']}",
        "",
        (
            f"Pool {summary['n_pool']} records, selected {summary['n_selected']}, "
            f"total shortfall {summary['total_shortfall']}."
        ),
        "",
        "## By loss type",
        "",
        "| loss type | selected |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in summary["by_loss_type"].items()),
        "",
        "## By source",
        "",
        "| source | pool | selected |",
        "|---|---|---|",
        *(f"| {r['source']} | {r['pool']} | {r['selected']} |" for r in summary["by_source"]),
        "",
        "## Records left out of the pool, by reason",
        "",
        "| part | reason | records |",
        "|---|---|---|",
        *(
            f"| {part} | {reason} | {count} |"
            for part, reasons in summary["skipped"].items()
            for reason, count in reasons.items()
        ),
        "",
        "## Shortfalls",
        "",
    ]
    if not summary["shortfalls"]:
        lines.append("None: every part delivered what it was asked for.")
    for entry in summary["shortfalls"]:
        lines.append(f"- `{entry['part']}`: asked {entry['n']}, short by {entry['shortfall']}")
        if "short_bins" in entry:
            lines.append(
                f"  (too few candidates: {entry['too_few_candidates']}, "
                f"blocked by the per-prompt cap: {entry['per_prompt_cap']})"
            )
            for b in entry["short_bins"]:
                lines.append(
                    f"  - PPL [{b['lo']:.3f}, {b['hi']:.3f}): quota {b['quota']}, available "
                    f"{b['available']}, selected {b['selected']}, short {b['shortfall']}"
                )
    if summary.get("by_ppl_bin"):
        lines += ["", "## By PPL bin", "", "| PPL bin | pool | selected |", "|---|---|---|"]
        lines += [
            f"| [{b['lo']:.3f}, {b['hi']:.3f}) | {b['pool']} | {b['selected']} |"
            for b in summary["by_ppl_bin"]
        ]
    return "\n".join(lines) + "\n"


def write_report(
    selection: Selection, pool: datasets.Dataset | list[dict[str, Any]], out_dir: str | Path
) -> dict[str, Path]:
    """selection_report.json / .md and selection_ppl.png (when PPL is present) under `out_dir`."""
    pool = as_dataset(pool)
    out = Path(out_dir)
    summary = selection_report(selection, pool)
    paths = {
        "json": write_json(summary, out / "selection_report.json"),
        "markdown": write_text(to_markdown(summary), out / "selection_report.md"),
    }
    pool_ppl, sel_ppl = _ppl(pool), _ppl(selection.records)
    if pool_ppl is not None and sel_ppl is not None:
        loss_types = (
            selection.records.select_columns(["loss_type"]).to_pandas()["loss_type"].to_numpy()
            if "loss_type" in selection.records.column_names
            else np.full(len(sel_ppl), "selected")
        )
        groups = {str(lt): sel_ppl[loss_types == lt] for lt in sorted(set(loss_types.tolist()))}
        edges = ppl_edges(selection.report, pool_ppl)
        paths["png"] = plot_ppl_histograms(
            pool_ppl,
            groups or {"selected": sel_ppl},
            out / "selection_ppl.png",
            bin_edges=edges,
            quotas=find_quotas(selection.report),
            title=f"{selection.report.get('selector', 'selection')}: PPL of pool vs selection",
        )
    return paths
