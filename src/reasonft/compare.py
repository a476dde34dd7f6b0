"""Compare the jobs of a sweep at a glance: `comparison.md`, `comparison.json` and
`comparison.png` at the sweep's root.

One row per job — its overrides, seed, the headline of its fine-tuned student (Pass@1, Pass@k,
entropy on its own samples, greedy accuracy: `evaluation/headline.py`), its objective and the
keys of the artifacts it used — and one row per distinct base student. When a seed is swept,
the jobs that differ only in their seed form a group, shown as mean ± sample standard deviation
(and min–max in the JSON) over its seeds. A job folder without `results.json` (the job failed or
is still running) is listed as such, never left out. The figure draws every job's pass@k curve
on one set of axes and its entropy against its Pass@1 beside it, one colour per group.

A multirun writes it when it ends (`WriteComparison`, a Hydra callback in conf/hydra/default.yaml);
afterwards, or for a sweep that stopped early:

    python -m reasonft.compare multirun/2026-12-04_10-00-00_ab12cd
    make compare SWEEP=multirun/2026-12-04_10-00-00_ab12cd
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from reasonft.evaluation.comparison_plot import COMPARISON_PNG, Curve, plot_comparison
from reasonft.evaluation.headline import Headline, headline
from reasonft.io import write_json, write_text

log = logging.getLogger(__name__)

RESULTS = "results.json"
COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
METRICS = ("pass@1", "pass@k", "entropy", "greedy_accuracy", "objective")
SPREAD = "sample standard deviation over the group's seeds (n - 1 in the denominator)"


@dataclass
class Job:
    folder: Path
    num: int | None
    overrides: list[str]
    seed: Any
    done: bool
    objective: float | None = None
    trained: Headline | None = None
    base: Headline | None = None
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """Its overrides without the seed: the jobs of one group differ only in their seed."""
        rest = [o for o in self.overrides if _override_key(o) != "seed"]
        return " ".join(rest) or "(no overrides)"

    @property
    def model(self) -> Headline | None:
        return self.trained or self.base

    def values(self) -> dict[str, float | None]:
        h = self.model or Headline()
        return {"pass@1": h.pass1, "pass@k": h.passk, "entropy": h.entropy,
                "greedy_accuracy": h.greedy, "objective": self.objective}


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _leading_number(name: str) -> int | None:
    match = re.match(r"(\d+)_", name)
    return int(match.group(1)) if match else None


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a Hydra sweep: those Hydra wrote `.hydra/` into, or that hold a
    `results.json`, sorted by job number."""
    found = [p for p in sweep_dir.iterdir()
             if p.is_dir() and ((p / ".hydra" / "overrides.yaml").is_file() or (p / RESULTS).is_file())]
    return sorted(found, key=lambda p: (_leading_number(p.name) is None, _leading_number(p.name) or 0, p.name))


def _seed(folder: Path, overrides: list[str]) -> Any:
    for o in overrides:
        if _override_key(o) == "seed":
            return yaml.safe_load(o.split("=", 1)[1])
    config = folder / ".hydra" / "config.yaml"
    if config.is_file():
        return (yaml.safe_load(config.read_text()) or {}).get("seed")
    return None


def read_job(folder: Path) -> Job:
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []] if overrides_file.is_file() else []
    job = Job(folder, _leading_number(folder.name), overrides, _seed(folder, overrides),
              done=(folder / RESULTS).is_file())
    if not job.done:
        return job
    try:
        results = json.loads((folder / RESULTS).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / RESULTS}: not readable JSON ({err})") from err
    job.objective = (results.get("objective") or {}).get("value")
    evaluations = results.get("results") or {}
    if evaluations.get("trained"):
        job.trained = headline(evaluations["trained"])
    if evaluations.get("base"):
        job.base = headline(evaluations["base"])
    evaluations_keys = []
    for name in results.get("stages") or {}:
        stage, _, key = name.partition(":")
        if stage == "evaluate":
            evaluations_keys.append(key)  # the base student's evaluation first, as the run built them
        else:
            job.keys[stage] = key
    for tag, key in zip(("base", "trained"), evaluations_keys, strict=False):
        job.keys[f"evaluate:{tag}"] = key
    return job


def _stats(values: list[float | None]) -> dict[str, Any] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {
        "mean": statistics.fmean(present),
        "std": statistics.stdev(present) if len(present) > 1 else 0.0,
        "min": min(present),
        "max": max(present),
        "n": len(present),
    }


def compare(sweep_dir: str | Path) -> dict[str, Any]:
    """The comparison of the jobs under `sweep_dir` as plain data (what comparison.json holds)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep folder")
    jobs = [read_job(f) for f in job_folders(sweep_dir)]
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir}: no job folder (a sub-folder with .hydra/overrides.yaml or {RESULTS}); "
            "give the folder a multirun wrote (multirun/<date>_<id>)"
        )
    bases: dict[str, dict[str, Any]] = {}
    for job in jobs:
        key = job.keys.get("evaluate:base", "")
        if job.base is not None and key not in bases:
            # one per evaluation of a base student (the evaluation's seed is the run's)
            bases[key] = {"evaluate_key": key, "first_job": job.folder.name, "seed": job.seed,
                          **job.base.as_dict()}
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    seeds_swept = any(len({str(j.seed) for j in members}) > 1 for members in groups.values())
    return {
        "sweep_dir": str(sweep_dir),
        "jobs": [
            {
                "folder": job.folder.name,
                "job": job.num,
                "overrides": job.overrides,
                "seed": job.seed,
                "status": "done" if job.done else f"no {RESULTS} (failed or not finished)",
                "objective": job.objective,
                "trained": job.trained.as_dict() if job.trained else None,
                "base": job.base.as_dict() if job.base else None,
                "artifacts": job.keys,
            }
            for job in jobs
        ],
        "base_students": list(bases.values()),
        "groups": [
            {
                "overrides": name,
                "jobs": [j.folder.name for j in members],
                "seeds": [j.seed for j in members],
                "finished": sum(j.done for j in members),
                **{m: _stats([j.values()[m] for j in members if j.done]) for m in METRICS},
            }
            for name, members in groups.items()
        ] if seeds_swept else [],
        "spread": SPREAD,
        "finished": sum(j.done for j in jobs),
        "total": len(jobs),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _fmt_stats(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "–"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _passk_name(comparison: dict[str, Any]) -> str:
    ks = {key for job in comparison["jobs"] for key in (job["trained"] or job["base"] or {})
          if key.startswith("pass@") and key not in ("pass@1", "pass@k_curve")}
    return "/".join(sorted(ks)) if ks else "pass@k"


def to_markdown(comparison: dict[str, Any]) -> str:
    passk = _passk_name(comparison)
    lines = [
        f"# Sweep comparison: {comparison['sweep_dir']}",
        "",
        (f"{comparison['finished']} of {comparison['total']} jobs finished. Pass@1, {passk} and "
         "entropy (on the model's own samples, nats/token) are of the fine-tuned student, averaged "
         "over the sampled benchmarks; greedy = Pass@1 of one greedy answer per problem, averaged "
         "over the greedy benchmarks; artifacts = the first 8 characters of each stage's key."),
        "",
    ]
    if comparison["groups"]:
        lines += [
            "## By recipe (seeds pooled)",
            "",
            f"mean ± {comparison['spread']}.",
            "",
            f"| overrides | seeds | Pass@1 | {passk} | entropy | greedy | objective |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for g in comparison["groups"]:
            seeds = ", ".join(str(s) for s in g["seeds"])
            if g["finished"] < len(g["jobs"]):
                seeds += f" ({len(g['jobs']) - g['finished']} not finished)"
            lines.append(
                f"| {g['overrides']} | {seeds} | " + " | ".join(
                    _fmt_stats(g[m]) for m in METRICS) + " |"
            )
        lines.append("")
    lines += [
        "## Jobs",
        "",
        f"| job | overrides | seed | Pass@1 | {passk} | entropy | greedy | objective | artifacts |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for job in comparison["jobs"]:
        h = job["trained"] or job["base"] or {}
        values = [h.get("pass@1"), next((v for k, v in h.items() if k.startswith("pass@") and k not in
                                        ("pass@1", "pass@k_curve")), None),
                  h.get("entropy"), h.get("greedy_accuracy"), job["objective"]]
        keys = " ".join(f"{s}:{k[:8]}" for s, k in job["artifacts"].items())
        cells = " | ".join(_fmt(v) for v in values) if job["status"] == "done" else (
            f"{job['status']} | | | | ")
        overrides = " ".join(o for o in job["overrides"] if _override_key(o) != "seed") or "–"
        lines.append(f"| {job['folder']} | {overrides} | {_fmt(job['seed'])} | {cells} | {keys} |")
    for base in comparison["base_students"]:
        values = [base.get("pass@1"), next((v for k, v in base.items() if k.startswith("pass@") and k not in
                                           ("pass@1", "pass@k_curve")), None),
                  base.get("entropy"), base.get("greedy_accuracy"), None]
        lines.append(
            f"| base student | (as evaluated in {base['first_job']}) | {_fmt(base['seed'])} | "
            + " | ".join(_fmt(v) for v in values) + f" | evaluate:{base['evaluate_key'][:8]} |"
        )
    lines += ["", f"Figure: {COMPARISON_PNG} (pass@k of every job; entropy against Pass@1)."]
    return "\n".join(lines) + "\n"


def curves(comparison: dict[str, Any]) -> list[Curve]:
    """One curve per finished job (a colour per group, one legend entry per group) and one per
    base student (dashed, black)."""
    names = [g["overrides"] for g in comparison["groups"]]
    out: list[Curve] = []
    seen: set[str] = set()
    for job in comparison["jobs"]:
        h = job["trained"] or job["base"]
        if h is None:
            continue
        group = " ".join(o for o in job["overrides"] if _override_key(o) != "seed") or "(no overrides)"
        if names:
            color, label, legend = names.index(group), group, group not in seen
        else:
            color, label, legend = len(out), job["folder"], True
        seen.add(group)
        out.append(Curve(label, {int(k): v for k, v in h["pass@k_curve"].items()}, h["pass@1"],
                         h["entropy"], color=color, legend=legend))
    several = len(comparison["base_students"]) > 1
    for base in comparison["base_students"]:
        label = "base student" + (f", seed {base['seed']}" if several else "")
        out.append(Curve(label, {int(k): v for k, v in base["pass@k_curve"].items()},
                         base["pass@1"], base["entropy"], color=-1, dashed=True, legend=not several))
    if several:
        out[-1].label, out[-1].legend = "base student (each seed)", True
    return out


def write_comparison(sweep_dir: str | Path) -> list[Path]:
    """comparison.md, comparison.json and comparison.png at `sweep_dir`; returns their paths."""
    sweep_dir = Path(sweep_dir)
    comparison = compare(sweep_dir)
    written = [
        write_json(comparison, sweep_dir / COMPARISON_JSON),
        write_text(to_markdown(comparison), sweep_dir / COMPARISON_MD),
    ]
    drawn = curves(comparison)
    if drawn:
        written.append(plot_comparison(
            drawn, sweep_dir / COMPARISON_PNG,
            f"{sweep_dir.name}: {comparison['finished']} of {comparison['total']} jobs",
        ))
    return written


class WriteComparison(Callback):
    """Hydra callback (`hydra.callbacks`): write the sweep's comparison when a multirun ends.

    A failure here is logged and never fails the sweep: its jobs' results stand on their own,
    and `python -m reasonft.compare <sweep dir>` writes the comparison afterwards."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            paths = write_comparison(sweep_dir)
        except Exception as err:  # noqa: BLE001 - reported, and the sweep's results stay valid
            log.error("the sweep comparison could not be written (%s: %s); run "
                      "`python -m reasonft.compare %s`", type(err).__name__, err, sweep_dir)
            return
        print(f"sweep comparison: {paths[1]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reasonft.compare",
        description="Write comparison.md, comparison.json and comparison.png at a sweep's root "
                    "(one row per job; seeds pooled per recipe when a seed was swept).",
    )
    parser.add_argument("sweep_dir", type=Path, help="the folder a multirun wrote (multirun/<date>_<id>)")
    args = parser.parse_args(argv)
    try:
        paths = write_comparison(args.sweep_dir)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    print(Path(paths[1]).read_text())
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
