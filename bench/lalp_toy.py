"""LALP on the toy world (METHODS.md §2): every table and plot of the study, from one command.

    python bench/lalp_toy.py                         # runs everything, writes --out
    python bench/lalp_toy.py --collect-only          # rebuild tables and plots from finished runs

What it runs (each a `run.py` multirun; artifacts are cached, so a rerun reuses them):
1. The paper's two uses on data=toy_lalp, each preset over `--seeds`: `experiment=toy_lalp_rank,
   toy_lalp_random,toy_lalp_galp_top,toy_lalp_lalp_top,toy_lalp_lalp_lowest`
   (the teacher ranking by LALP and GALP; curation from the pooled teachers).
2. Each teacher alone: `experiment=toy_lalp_teacher select.teacher=<every teacher> seed=...`,
   the same number of responses per teacher (all toy_lalp teachers are correct solvers). Its
   greedy accuracy, averaged over seeds, is the ground-truth order a ranking should recover.
Then, in this process, with the frozen base student the runs built:
3. The rank agreement (Spearman, Kendall tau-b) of the LALP and the GALP teacher means with the
   ground truth, with percentile-bootstrap intervals over the ranking's prompts.
4. The window sweep: LALP teacher means at integer and fractional `score.window`s, and their rank
   agreement with GALP's means and with the ground truth (METHODS §2a: large windows ~ GALP).
5. Plots: the ranking beside the ground truth; local (the configured window, and window 1) vs
   global per-step log-probabilities of a few responses per teacher (global per-step means: the
   scorer at window 1.0, where every step sees all the steps before it and method=all reads
   them off the full-prefix pass).
Output: <out>/lalp_toy.md (the tables), lalp_ranking.png, lalp_steps.png, lalp_toy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rank_correlation import kendall_tau_b, spearman

from reasonft.config import compose_config
from reasonft.data.prompts import PromptFormat
from reasonft.io import read_records
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.selection.teacher_rank import bootstrap_means

ROOT = Path(__file__).resolve().parents[1]
USES = ("toy_lalp_rank", "toy_lalp_random", "toy_lalp_galp_top", "toy_lalp_lalp_top",
        "toy_lalp_lalp_lowest")
CURATIONS = ("random", "galp_top", "lalp_top", "lalp_lowest")
WINDOWS: tuple[int | float, ...] = (1, 2, 4, 8, 0.1, 0.25, 0.5, 0.75)
GREEDY, SAMPLED = "toy_test_greedy", "toy_test"


def run_multirun(sweep_dir: Path, overrides: list[str]) -> None:
    """`run.py -m overrides...` into `sweep_dir`; a failed job stops the study."""
    command = [sys.executable, str(ROOT / "run.py"), "-m", *overrides,
               f"hydra.sweep.dir={sweep_dir}"]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


# -- reading finished runs ----------------------------------------------------------------------


def finished_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """task_name, seed, teacher and results.json of every finished job under `sweep_dir`."""
    jobs = []
    for results in sorted(sweep_dir.glob("*/results.json")):
        cfg = OmegaConf.load(results.parent / ".hydra" / "config.yaml")
        report = json.loads(results.read_text())
        jobs.append({
            "task_name": report["task_name"],  # as the run resolved it (.hydra/ keeps the interpolation)
            "seed": int(cfg.seed),
            "teacher": OmegaConf.select(cfg, "select.teacher"),
            "results": report,
        })
    return jobs


def stage_report(job: dict[str, Any], stage: str) -> tuple[Path, dict[str, Any]]:
    for key, entry in job["results"]["stages"].items():
        if key.split(":")[0] == stage:
            return Path(entry["path"]), entry["report"]
    raise KeyError(f"{job['task_name']} seed {job['seed']}: no {stage} stage in results.json")


def metric(job: dict[str, Any], model: str, benchmark: str, name: str) -> float:
    return float(job["results"]["results"][model]["benchmarks"][benchmark][name])


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN s.e. for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


def evaluation_row(jobs: list[dict[str, Any]], model: str = "trained") -> dict[str, Any]:
    row: dict[str, Any] = {"seeds": sorted(j["seed"] for j in jobs)}
    for label, bench, name in (("greedy", GREEDY, "pass@1"), ("pass@1", SAMPLED, "pass@1"),
                               ("pass@8", SAMPLED, "pass@8")):
        row[label] = mean_se([metric(j, model, bench, name) for j in jobs])
    return row


# -- rank agreement -----------------------------------------------------------------------------


def per_prompt_matrix(records: Any, prompts: list[str], teachers: list[str], column: str
                      ) -> np.ndarray:
    """[prompt, teacher] mean of `column` over each teacher's correct responses (NaN: none)."""
    frame = records.to_pandas()
    frame = frame[frame["correct"].astype(bool) & frame["source"].isin(teachers)]
    table = frame.groupby(["prompt_id", "source"])[column].mean().unstack("source")
    return table.reindex(index=prompts, columns=teachers).to_numpy(np.float64)


def agreement_with_truth(values: np.ndarray, truth: np.ndarray, n_bootstrap: int, seed: int,
                         confidence: float = 0.95) -> dict[str, Any]:
    """Spearman and Kendall of the teacher means of `values` [prompt, teacher] with `truth`
    [teacher]: point values and percentile-bootstrap intervals over prompts."""
    means = np.nanmean(values, axis=0)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, values.shape[0], size=(n_bootstrap, values.shape[0]))
    boot = bootstrap_means(values, resamples)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    out: dict[str, Any] = {}
    for name, correlate in (("spearman", spearman), ("kendall", kendall_tau_b)):
        draws = np.array([correlate(b, truth) for b in boot])
        low, high = np.nanpercentile(draws, [alpha, 100.0 - alpha])
        out[name] = {"value": correlate(means, truth), "ci": [float(low), float(high)]}
    return out


# -- scoring with the frozen base student -------------------------------------------------------


def score_windows(cfg: DictConfig, base_path: str, records: Any, windows: list[int | float]
                  ) -> list[Any]:
    """The records scored (method=all: galp and lalp) at each window, as the pipeline scores.

    A list, not a dict keyed by window: 1 (one step) and 1.0 (all steps) are equal as keys."""
    model = load_student(base_path, dtype=cfg.model.dtype).eval()
    tokenizer = load_tokenizer(base_path)
    prompt_format = PromptFormat.from_config(cfg.data).as_dict()
    out = []
    for window in windows:
        scorer = instantiate(cfg.score, method="all", window=window, prompt_format=prompt_format,
                             progress=False)
        out.append(scorer(records, model, tokenizer)[0])
    return out


def teacher_means(scored: Any, prompts: list[str], teachers: list[str], column: str) -> np.ndarray:
    return np.nanmean(per_prompt_matrix(scored, prompts, teachers, column), axis=0)


# -- plots --------------------------------------------------------------------------------------


def plot_ranking(path: Path, teachers: list[str], ranking: dict[str, dict[str, Any]],
                 truth: dict[str, tuple[float, float]]) -> None:
    """Mean LALP and GALP with bootstrap CIs (left) beside the ground-truth accuracy (right),
    teachers in ground-truth order."""
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
    x = np.arange(len(teachers))
    for i, m in enumerate(("lalp", "galp")):
        means = np.array([ranking[t][f"mean_{m}"] for t in teachers])
        low = np.array([ranking[t][f"ci_low_{m}"] for t in teachers])
        high = np.array([ranking[t][f"ci_high_{m}"] for t in teachers])
        left.bar(x + (i - 0.5) * 0.4, means, 0.4, yerr=np.vstack([means - low, high - means]),
                 capsize=3, label=f"mean {m.upper()}")
    left.set_xticks(x, teachers)
    left.axhline(0.0, color="black", linewidth=0.6)
    left.set_ylabel("log-probability per token (base student)")
    left.set_title("Teacher scores (95% bootstrap CI over prompts)")
    left.legend(loc="lower left")
    acc = np.array([truth[t][0] for t in teachers])
    se = np.nan_to_num(np.array([truth[t][1] for t in teachers]))
    right.bar(x, acc, 0.6, yerr=se, capsize=3, color="tab:green")
    right.set_xticks(x, teachers)
    right.set_ylabel("greedy accuracy after SFT on the teacher alone")
    right.set_title("Ground truth (mean ± s.e. over seeds)")
    right.set_ylim(0.0, 1.0)
    fig.savefig(path, dpi=120)


def plot_steps(path: Path, teachers: list[str], curves: list[tuple[str, str, Any]],
               prompts: list[str], per_teacher: int) -> None:
    """Per-step mean log-prob of a few responses per teacher, one line per (label, style,
    scored records) in `curves` (global: full prefix; local: a window)."""
    fig = Figure(figsize=(3.2 * len(teachers), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(teachers), sharey=True))
    rows = [{(r["prompt_id"], r["source"]): r["step_logps"] for r in scored if r["correct"]}
            for _, _, scored in curves]
    for ax, teacher in zip(axes, teachers):
        shown = [p for p in prompts if (p, teacher) in rows[0]][:per_teacher]
        for k, prompt in enumerate(shown):
            for (label, style, _), steps_of in zip(curves, rows):
                values = steps_of[(prompt, teacher)]
                ax.plot(np.arange(1, len(values) + 1), values, style, color=f"C{k}",
                        markersize=3, label=label if k == 0 else None)
        ax.set_title(teacher)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("mean log-prob of the step's tokens")
    axes[0].legend(loc="lower left", fontsize="small")
    fig.suptitle(f"{per_teacher} responses per teacher (one colour each), base student")
    fig.savefig(path, dpi=120)


# -- tables -------------------------------------------------------------------------------------


def fmt(value: float, se: float | None = None) -> str:
    if se is None or math.isnan(se):
        return f"{value:.3f}"
    return f"{value:.3f} ± {se:.3f}"


def fmt_ci(entry: dict[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:+.2f} [{low:+.2f}, {high:+.2f}]"


def score_with_ci(row: dict[str, Any], m: str) -> str:
    return f"{row[f'mean_{m}']:.3f} [{row[f'ci_low_{m}']:.3f}, {row[f'ci_high_{m}']:.3f}]"


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "lalp_toy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--responses-per-teacher", type=int, default=3,
                        help="responses per teacher in the per-step plot")
    parser.add_argument("--run-overrides", nargs="*", default=[],
                        help="Hydra overrides added to every run, e.g. trainer.max_epochs=1 "
                             "for a quick check of the machinery (the tables then mean little)")
    parser.add_argument("--collect-only", action="store_true",
                        help="skip the runs; read the finished ones under --out")
    args = parser.parse_args()
    started = time.perf_counter()
    out: Path = args.out.resolve()
    cfg = compose_config(["experiment=toy_lalp_rank"])
    teachers = [str(t) for t in cfg.data.source.teachers]
    seeds = ",".join(str(s) for s in args.seeds)
    if not args.collect_only:
        extra = list(args.run_overrides)
        run_multirun(out / "uses", [f"experiment={','.join(USES)}", f"seed={seeds}", *extra])
        run_multirun(out / "teachers", ["experiment=toy_lalp_teacher",
                                        f"select.teacher={','.join(teachers)}", f"seed={seeds}",
                                        *extra])
    runs_seconds = time.perf_counter() - started

    uses, alone = finished_jobs(out / "uses"), finished_jobs(out / "teachers")
    by_teacher = {t: [j for j in alone if j["teacher"] == t] for t in teachers}
    missing = [t for t, jobs in by_teacher.items() if not jobs]
    if missing:
        raise SystemExit(f"no finished run of teacher(s) {missing} under {out / 'teachers'}")
    truth = {t: mean_se([metric(j, "trained", GREEDY, "pass@1") for j in jobs])
             for t, jobs in by_teacher.items()}
    truth_vector = np.array([truth[t][0] for t in teachers])
    gt_order = sorted(teachers, key=lambda t: -truth[t][0])

    rank_job = min((j for j in uses if j["task_name"] == "toy_lalp_rank"), key=lambda j: j["seed"])
    _, select_report = stage_report(rank_job, "rank")
    score_path, _ = stage_report(rank_job, "score")
    base_dir, base_report = stage_report(rank_job, "base")
    ranking = {row["source"]: row for row in select_report["teacher_ranking"]}
    prompts = [str(p) for p in select_report["sampled_prompt_ids"]]
    scored = read_records(score_path / "records.parquet")
    agreement = {m: agreement_with_truth(per_prompt_matrix(scored, prompts, teachers, m),
                                         truth_vector, args.bootstrap, rank_job["seed"])
                 for m in ("lalp", "galp")}

    wanted = set(prompts)
    sample = scored.filter(lambda r: r["prompt_id"] in wanted).select_columns(
        ["prompt_id", "prompt", "answer", "response", "source", "steps", "correct"])
    *window_scores, global_steps = score_windows(cfg, str(base_dir / base_report["model"]), sample,
                                                 [*WINDOWS, 1.0])
    default_window = WINDOWS.index(int(cfg.score.window))
    galp_means = teacher_means(window_scores[default_window], prompts, teachers, "galp")
    sweep = []
    for window, window_scored in zip(WINDOWS, window_scores):
        lalp_means = teacher_means(window_scored, prompts, teachers, "lalp")
        sweep.append({
            "window": window,
            "means": dict(zip(teachers, lalp_means.tolist())),
            "spearman_galp": spearman(lalp_means, galp_means),
            "kendall_galp": kendall_tau_b(lalp_means, galp_means),
            "spearman_truth": spearman(lalp_means, truth_vector),
            "kendall_truth": kendall_tau_b(lalp_means, truth_vector),
        })

    out.mkdir(parents=True, exist_ok=True)
    plot_ranking(out / "lalp_ranking.png", gt_order, ranking, truth)
    curves = [("global (full prefix)", "-o", global_steps),
              (f"local, window {cfg.score.window}", "--x", window_scores[default_window]),
              ("local, window 1", ":s", window_scores[WINDOWS.index(1)])]
    plot_steps(out / "lalp_steps.png", gt_order, curves, prompts, args.responses_per_teacher)

    one_per_seed = {j["seed"]: j for j in uses if j["task_name"] != "toy_lalp_rank"}
    base_row = evaluation_row(list(one_per_seed.values()), "base")
    curation = {c: evaluation_row([j for j in uses if j["task_name"] == f"toy_lalp_{c}"])
                for c in CURATIONS}
    curation.update({f"{t} alone": evaluation_row(by_teacher[t]) for t in gt_order})

    setup = (f"Teachers {teachers}; seeds {args.seeds}; ranking on {len(prompts)} prompts, "
             f"{args.bootstrap} bootstrap resamples.")
    md = ["# LALP on the toy world", "", setup, "",
          "## Teacher ranking against the ground truth", ""]
    md += markdown_table(
        ["teacher", "mean LALP [95% CI]", "LALP rank", "mean GALP [95% CI]", "GALP rank",
         "greedy acc. alone (ground truth)", "true rank"],
        [[t, score_with_ci(ranking[t], "lalp"), str(ranking[t]["rank_lalp"]),
          score_with_ci(ranking[t], "galp"), str(ranking[t]["rank_galp"]),
          fmt(*truth[t]), str(gt_order.index(t) + 1)] for t in gt_order])
    md += markdown_table(
        ["score", "Spearman with ground truth [95% CI]", "Kendall tau-b [95% CI]"],
        [[m.upper(), fmt_ci(agreement[m]["spearman"]), fmt_ci(agreement[m]["kendall"])]
         for m in ("lalp", "galp")])
    md += ["## Curation from the pooled teachers (SFT on one response per prompt)", ""]
    md += markdown_table(
        ["training set", "seeds", "greedy acc.", "pass@1 (8 samples)", "pass@8"],
        [["base student (no SFT)", str(len(base_row["seeds"])), fmt(*base_row["greedy"]),
          fmt(*base_row["pass@1"]), fmt(*base_row["pass@8"])]]
        + [[name, str(len(row["seeds"])), fmt(*row["greedy"]), fmt(*row["pass@1"]),
            fmt(*row["pass@8"])] for name, row in curation.items()])
    md += ["## Window sweep (`score.window=`): LALP teacher means", ""]
    md += markdown_table(
        ["window", *teachers, "Spearman with GALP", "Kendall with GALP",
         "Spearman with truth", "Kendall with truth"],
        [[str(s["window"]), *[f"{s['means'][t]:.3f}" for t in teachers],
          f"{s['spearman_galp']:+.2f}", f"{s['kendall_galp']:+.2f}",
          f"{s['spearman_truth']:+.2f}", f"{s['kendall_truth']:+.2f}"] for s in sweep]
        + [["GALP", *[f"{g:.3f}" for g in galp_means], "+1.00", "+1.00",
            f"{spearman(galp_means, truth_vector):+.2f}",
            f"{kendall_tau_b(galp_means, truth_vector):+.2f}"]])
    total = time.perf_counter() - started
    md += [f"Wall time: {total:.0f} s ({runs_seconds:.0f} s in the runs).",
           "Plots: lalp_ranking.png, lalp_steps.png.", ""]
    (out / "lalp_toy.md").write_text("\n".join(md))
    (out / "lalp_toy.json").write_text(json.dumps({
        "teachers": teachers, "seeds": args.seeds, "ground_truth": truth, "ranking": ranking,
        "agreement": agreement, "curation": curation, "base": base_row, "window_sweep": sweep,
        "wall_seconds": total, "run_seconds": runs_seconds}, indent=2, default=str))
    print("\n".join(md))
    print(f"written: {out / 'lalp_toy.md'}")


if __name__ == "__main__":
    main()
