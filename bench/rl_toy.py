"""The OXA paper's third claim on the toy world: GRPO (rl=toy) at the same settings from four
starting points — the base student, SFT, OXA_MLE and OXA_FULL — and several RL seeds.

For each run, from its rl artifact (`history.jsonl`, `rl_report.json`): the starting entropy
(the validation's entropy on the policy's own samples before the first step, and the first
step's rollout entropy), validation Pass@1 / Pass@8 before the first and after the last step,
the mean reward of the first and last steps. Writes, under --out:

- `rl_toy.md` / `rl_toy.json`: the table (mean ± half the range over the seeds) and every run;
- `rl_toy_comparison.png`: each starting point's curves (mean over seeds) on shared axes.

The same runs as the Hydra multiruns (the evaluation stage left out to save CPU; the preset
includes it):

    python run.py -m experiment=toy_sft_rl,toy_oxa_mle_rl,toy_oxa_full_rl stages=[train,rl,report] rl.seed=1,2,3
    python run.py -m experiment=toy_base_rl stages=[rl,report] rl.seed=1,2,3

    .venv/bin/python bench/rl_toy.py                          # 4 starting points x seeds 1, 2, 3
    .venv/bin/python bench/rl_toy.py --seeds 1 --starts base oxa_full --out /tmp/rl

Artifacts go to the normal cache (REASONFT_CACHE): a second run reuses them and only collects.
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

STARTS = {
    "base": ("toy_base_rl", "stages=[rl,report]"),
    "sft": ("toy_sft_rl", "stages=[train,rl,report]"),
    "oxa_mle": ("toy_oxa_mle_rl", "stages=[train,rl,report]"),
    "oxa_full": ("toy_oxa_full_rl", "stages=[train,rl,report]"),
}
COLUMNS = (
    ("H(own) start", "start_val_entropy"),
    ("H(rollouts) step 1", "start_rollout_entropy"),
    ("Pass@1 start", "start_pass@1"),
    ("Pass@8 start", "start_pass@8"),
    ("Pass@1 final", "final_pass@1"),
    ("Pass@8 final", "final_pass@8"),
    ("reward first step", "first_reward"),
    ("reward last step", "last_reward"),
    ("groups of one outcome", "zero_std_share"),
    ("RL wall s", "seconds"),
)


def run_one(start: str, seed: int, out: Path, extra: list[str]) -> dict[str, Any]:

    from reasonft.config import compose_config
    from reasonft.pipeline.runner import Pipeline

    preset, stages = STARTS[start]
    overrides = [f"experiment={preset}", stages, f"rl.seed={seed}", "logger=csv",
                 f"paths.output_dir={out / f'{start}-seed{seed}'}", *extra]
    cfg = compose_config(overrides=overrides)
    pipeline = Pipeline(cfg)
    pipeline.run()
    art = pipeline.built["rl"]
    rows = [json.loads(x) for x in (art.path / "history.jsonl").read_text().splitlines() if x.strip()]
    report = json.loads((art.path / "rl_report.json").read_text())
    return summarise(start, seed, rows, report)


def _at(rows: list[dict[str, Any]], key: str, last: bool = False) -> float | None:
    values = [r[key] for r in rows if key in r]
    if not values:
        return None
    return values[-1] if last else values[0]


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.fmean(values) if values else None


def summarise(start: str, seed: int, rows: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    return {
        "start": start,
        "seed": seed,
        "start_val_entropy": _at(rows, "val/entropy"),
        "start_rollout_entropy": _at(rows, "entropy"),
        "start_pass@1": _at(rows, "val/pass@1"),
        "start_pass@8": _at(rows, "val/pass@8"),
        "final_pass@1": _at(rows, "val/pass@1", last=True),
        "final_pass@8": _at(rows, "val/pass@8", last=True),
        "first_reward": _at(rows, "reward"),
        "last_reward": _at(rows, "reward", last=True),
        # the share of prompt groups whose samples all scored alike: no advantage, no gradient
        "zero_std_share": _mean(rows, "frac_reward_zero_std"),
        "seconds": report.get("seconds"),
        "steps": report.get("steps"),
        "reward_status": report.get("rewards", {}).get("status"),
        "history": rows,
    }


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def table(runs: list[dict[str, Any]]) -> str:
    header = "| start | seeds | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for start in STARTS:
        mine = [r for r in runs if r["start"] == start]
        if not mine:
            continue
        cells = []
        for name, key in COLUMNS:
            if key == "seconds":
                cells.append(f"{statistics.fmean(r[key] for r in mine):.0f}")
            else:
                cells.append(spread([r[key] for r in mine]))
        lines.append(f"| {start} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_history(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step, each metric's mean over the runs that logged it at that step."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for run in runs:
        for row in run["history"]:
            slot = by_step.setdefault(int(row["step"]), {})
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    slot.setdefault(key, []).append(float(value))
    return [
        {"step": step, **{k: statistics.fmean(v) for k, v in metrics.items()}}
        for step, metrics in sorted(by_step.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("outputs/rl_toy"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. rl.max_steps=12)")
    args = parser.parse_args()

    import torch

    from reasonft.console import quiet_libraries
    from reasonft.rl.plots import plot_runs

    torch.set_num_threads(1)
    quiet_libraries()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = []
    for start in args.starts:
        for seed in args.seeds:
            t0 = time.perf_counter()
            runs.append(run_one(start, seed, args.out, list(args.overrides)))
            runs[-1]["wall_s"] = time.perf_counter() - t0
            print(f"{start} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    text = table(runs)
    per_run = "\n".join(
        f"- {r['start']} seed {r['seed']}: H(own) {r['start_val_entropy']:.3f}, Pass@1 "
        f"{r['start_pass@1']:.3f} -> {r['final_pass@1']:.3f}, Pass@8 {r['start_pass@8']:.3f} -> "
        f"{r['final_pass@8']:.3f}, rewards {r['reward_status']}"
        for r in runs
    )
    total = time.perf_counter() - started
    (args.out / "rl_toy.md").write_text(f"{text}\n\n{per_run}\n\nwall: {total:.0f} s\n")
    (args.out / "rl_toy.json").write_text(json.dumps({"runs": runs, "wall_s": total}, indent=1))
    plot_runs(
        {start: mean_history([r for r in runs if r["start"] == start]) for start in args.starts},
        args.out / "rl_toy_comparison.png",
        title=f"GRPO (rl=toy) from four starting points, mean over RL seeds {args.seeds}",
    )
    print(text)
    print(per_run)
    print(f"wall: {total:.0f} s; {args.out / 'rl_toy.md'}, {args.out / 'rl_toy_comparison.png'}")


if __name__ == "__main__":
    main()
