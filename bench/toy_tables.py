"""Every number of the README's toy tables, from the pipeline itself (one command).

1. The four recipes (toy_sft, toy_sft_lp, toy_oxa_mle, toy_oxa_full) on base students built with
   several build seeds (`model.build.seed`): greedy accuracy, Pass@1, Pass@8, entropy of the
   policy on its own samples, teacher-forced held-out entropy, response length — the base row
   and each recipe as mean ± spread (half the range) over the build seeds.
2. The OXA_FULL lambda sweep on one build seed (METHODS §1c, `loss.terms.ul.weight`): for each
   lambda, and OXA_MLE as the reference, the mean token log-probability and entropy of the
   suppressed (UL) responses under the trained policy, the entropy on its own samples, greedy
   accuracy, Pass@1 and Pass@8.

    .venv/bin/python bench/toy_tables.py                       # 3 build seeds, the full sweep
    .venv/bin/python bench/toy_tables.py --build-seeds 0 --lambdas 1e-4 --out toy_tables.json

Artifacts go to the normal cache (REASONFT_CACHE): a second run reuses them and only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from reasonft.config import compose_config
from reasonft.console import quiet_libraries
from reasonft.io import read_records

RECIPES = ("toy_sft", "toy_sft_lp", "toy_oxa_mle", "toy_oxa_full")
COLUMNS = (
    ("greedy accuracy", "toy_test_greedy", "pass@1"),
    ("Pass@1", "toy_test", "pass@1"),
    ("Pass@8", "toy_test", "pass@8"),
    ("H(own)", "toy_test", "entropy"),
    ("H(held-out)", None, "heldout_entropy"),
    ("tokens", "toy_test", "mean_tokens"),
)


EXTRA: list[str] = []


def run(overrides: list[str], out: Path) -> Any:
    from reasonft.pipeline.runner import Pipeline

    cfg = compose_config(overrides=[*overrides, *EXTRA, f"paths.output_dir={out}", "logger=none"])
    pipeline = Pipeline(cfg)
    pipeline.run()
    return pipeline


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    row = {}
    for name, bench, key in COLUMNS:
        if bench is None:
            row[name] = (summary.get("heldout_entropy") or {}).get("entropy")
        else:
            row[name] = summary["benchmarks"][bench].get(key)
    return row


def measure_on(model_path: str, records: Any, pipeline: Any) -> dict[str, float]:
    from reasonft.data.records import SCORE_COLUMNS
    from reasonft.evaluation.entropy import response_entropies
    from reasonft.scoring.scorer import Scorer

    stale = [c for c in dict.fromkeys((*SCORE_COLUMNS, "score_conditioning")) if c in records.column_names]
    records = records.remove_columns(stale)  # scored again, under this policy
    model, tok = pipeline.load_model(model_path)
    model.eval()
    scorer = Scorer(method="galp", prompt_format=pipeline.prompt_format, progress=False)
    with torch.no_grad():
        scored = scorer(records, model, tok)[0]
        entropies, _ = response_entropies(model, tok, records, pipeline.prompt_format, progress=False)
    pairs = [e for e in entropies if e is not None]
    return {
        "UL log-prob": statistics.fmean(scored["galp"]),
        "UL entropy": sum(s for s, _ in pairs) / max(1, sum(n for _, n in pairs)),
    }


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    digits = 1 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--lambdas", type=float, nargs="*", default=[1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--out", type=Path, default=Path("toy_tables.json"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for every run (tests use tiny sizes)")
    args = parser.parse_args()
    EXTRA.extend(args.set)
    quiet_libraries()
    torch.set_num_threads(1)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"reasonft-toy-tables-{os.getpid()}"
    started = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {"base student": []}
    for seed in args.build_seeds:
        for recipe in args.recipes:
            p = run([f"experiment={recipe}", f"model.build.seed={seed}"], scratch / f"{recipe}-{seed}")
            if recipe == args.recipes[0]:
                rows["base student"].append(metrics(p.results["base"]))
            rows.setdefault(recipe, []).append(metrics(p.results["trained"]))
    table = ["| model | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, values in rows.items():
        cells = [spread([v[c[0]] for v in values]) for c in COLUMNS]
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    per_seed = {
        column: {name: [round(v[column], 4) for v in values] for name, values in rows.items()}
        for column in ("greedy accuracy", "Pass@1")
    }

    sweep: dict[str, dict[str, float]] = {}
    seed = args.build_seeds[0]
    if args.lambdas:
        full = {lam: run(["experiment=toy_oxa_full", f"model.build.seed={seed}",
                          f"loss.terms.ul.weight={lam}"], scratch / f"lambda-{lam}") for lam in args.lambdas}
        mle = run(["experiment=toy_oxa_mle", f"model.build.seed={seed}"], scratch / "lambda-mle")
        ul = read_records(next(iter(full.values())).selected.path / "records.parquet")
        ul = ul.filter(lambda r: r["loss_type"] == "ul")
        base = next(iter(full.values()))
        sweep["base student"] = {**measure_on(base.base_path, ul, base), **metrics(base.results["base"])}
        sweep["toy_oxa_mle (lambda 0)"] = {**measure_on(mle.trained_model_path(), ul, mle),
                                           **metrics(mle.results["trained"])}
        for lam, p in full.items():
            sweep[f"toy_oxa_full lambda {lam:g}"] = {**measure_on(p.trained_model_path(), ul, p),
                                                     **metrics(p.results["trained"])}
    sweep_cols = ("UL log-prob", "UL entropy", "H(own)", "greedy accuracy", "Pass@1", "Pass@8")
    sweep_table = ["| policy | " + " | ".join(sweep_cols) + " |", "|---" * (len(sweep_cols) + 1) + "|"]
    for name, m in sweep.items():
        sweep_table.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in sweep_cols) + " |")

    minutes = (time.perf_counter() - started) / 60
    print(f"## The four recipes, mean ± half-range over build seeds {args.build_seeds}\n")
    print("\n".join(table))
    for column, values in per_seed.items():
        print(f"\n{column} per build seed: {json.dumps(values)}")
    if sweep:
        print(f"\n## lambda sweep (build seed {seed}; UL = the {len(ul)} suppressed responses)\n")
        print("\n".join(sweep_table))
    print(f"\n{minutes:.1f} min on {torch.get_num_threads()} thread(s)")
    args.out.write_text(json.dumps({"recipes": rows, "sweep": sweep, "minutes": minutes}, indent=1))


if __name__ == "__main__":
    main()
