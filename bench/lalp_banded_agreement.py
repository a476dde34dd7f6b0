"""How far banded LALP (one masked pass) is from exact LALP, on a real teacher pool and student.

    python bench/lalp_banded_agreement.py                       # the toy LALP pool (data=toy_lalp)
    python bench/lalp_banded_agreement.py --prompts 100 --windows 1 0.25

For every window (integer k, or a fraction of the preceding steps) the pool is scored with exact
LALP and with banded LALP under each position-id choice (`score.band_positions`: global, local),
by the frozen base student of `experiment=toy_lalp_rank` (model=toy_no_multiplication). Reported
per window and choice, banded against exact:

- per-step log-prob error: mean and largest |banded - exact| over every step of the pool;
- within a prompt: Spearman and Kendall tau-b of the responses' LALPs, averaged over prompts;
  `lalp_top` agreement: the share of prompts where both pick the same response;
- teachers by mean LALP: Spearman and Kendall of the two teacher orders, on the whole pool and over
  `--bootstrap` resamples of the prompts (median, 5th percentile, share of resamples >= 0.95).

Output: a markdown table on stdout and <out>/lalp_banded_agreement.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rank_correlation import kendall_tau_b, spearman

from reasonft.config import compose_config
from reasonft.data.prompts import PromptFormat
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.scoring.lalp import WindowSpec

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = ("1", "2", "4", "8", "0.1", "0.25", "0.5")
POSITIONS = ("global", "local")


def window_arg(text: str) -> WindowSpec:
    return float(text) if "." in text else int(text)


def student_and_pool(overrides: list[str], n_prompts: int | None) -> tuple[Any, Any, Any, Any]:
    """The base student (built into the shared cache if absent), its tokenizer, the score config
    and the teacher pool (every teacher's response to the first `n_prompts` train prompts)."""
    cfg = compose_config(overrides=["experiment=toy_lalp_rank", *overrides])
    path = instantiate(cfg.model.build).build(cfg.paths.cache_dir)
    model = load_student(path, dtype=cfg.model.dtype).eval()
    tokenizer = load_tokenizer(path)
    pool = instantiate(cfg.data.source).teacher_pool("train")
    if n_prompts is not None:
        keep = set(sorted(set(pool["prompt_id"]), key=pool["prompt_id"].index)[:n_prompts])
        pool = pool.filter(lambda r: r["prompt_id"] in keep)
    return model, tokenizer, cfg, pool


def lalp_matrix(scored: Any, prompts: list[str], teachers: list[str]) -> np.ndarray:
    """[prompts, teachers] LALP (NaN where a teacher has no response to a prompt)."""
    out = np.full((len(prompts), len(teachers)), np.nan)
    p_index = {p: i for i, p in enumerate(prompts)}
    t_index = {t: j for j, t in enumerate(teachers)}
    for row in scored.select_columns(["prompt_id", "source", "lalp"]).to_list():
        out[p_index[row["prompt_id"]], t_index[row["source"]]] = row["lalp"]
    return out


def compare(exact: Any, banded: Any, prompts: list[str], teachers: list[str],
            n_bootstrap: int, seed: int) -> dict[str, Any]:  # fmt: skip
    steps_e = np.concatenate([np.asarray(s) for s in exact["step_logps"]])
    steps_b = np.concatenate([np.asarray(s) for s in banded["step_logps"]])
    err = np.abs(steps_b - steps_e)
    e, b = lalp_matrix(exact, prompts, teachers), lalp_matrix(banded, prompts, teachers)
    within_s, within_k, same_top = [], [], []
    for x, y in zip(e, b):
        ok = ~np.isnan(x)
        if ok.sum() < 2:
            continue
        same_top.append(np.nanargmax(x) == np.nanargmax(y))
        if np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
            within_s.append(spearman(x[ok], y[ok]))
            within_k.append(kendall_tau_b(x[ok], y[ok]))
    mean_e, mean_b = np.nanmean(e, 0), np.nanmean(b, 0)
    rng = np.random.default_rng(seed)
    boot_s = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(prompts), len(prompts))
        boot_s.append(spearman(np.nanmean(e[pick], 0), np.nanmean(b[pick], 0)))
    boot = np.asarray(boot_s)
    return {
        "step_abs_error_mean": float(err.mean()),
        "step_abs_error_max": float(err.max()),
        "steps": len(err),
        "within_prompt_spearman": float(np.mean(within_s)),
        "within_prompt_kendall": float(np.mean(within_k)),
        "lalp_top_agreement": float(np.mean(same_top)),
        "teacher_spearman": spearman(mean_e, mean_b),
        "teacher_kendall": kendall_tau_b(mean_e, mean_b),
        "teacher_spearman_bootstrap_median": float(np.median(boot)),
        "teacher_spearman_bootstrap_p05": float(np.quantile(boot, 0.05)),
        "teacher_spearman_bootstrap_share_ge_095": float(np.mean(boot >= 0.95)),
        "teacher_means_exact": dict(zip(teachers, mean_e.tolist())),
        "teacher_means_banded": dict(zip(teachers, mean_b.tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "lalp_banded_agreement")
    parser.add_argument("--windows", nargs="+", default=list(WINDOWS))
    parser.add_argument("--positions", nargs="+", default=list(POSITIONS), choices=POSITIONS)
    parser.add_argument("--prompts", type=int, default=None, help="first N train prompts (all)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    model, tokenizer, cfg, pool = student_and_pool(args.overrides, args.prompts)
    teachers = [str(t) for t in cfg.data.source.teachers]
    prompts = list(dict.fromkeys(pool["prompt_id"]))
    prompt_format = PromptFormat.from_config(cfg.data).as_dict()
    n_steps = [len(s) for s in pool["steps"]] if "steps" in pool.column_names else []
    print(f"pool: {len(pool)} responses, {len(prompts)} prompts, teachers {teachers}"
          + (f", {min(n_steps)}-{max(n_steps)} steps a response" if n_steps else ""))  # fmt: skip
    rows = []

    def scored(window: WindowSpec, **kwargs: Any) -> tuple[Any, float]:
        scorer = instantiate(cfg.score, method="lalp", window=window,
                             prompt_format=prompt_format, progress=False, **kwargs)  # fmt: skip
        t = time.perf_counter()
        return scorer(pool, model, tokenizer)[0], time.perf_counter() - t

    for text in args.windows:
        exact, seconds_exact = scored(window_arg(text), lalp_pass="exact")
        for positions in args.positions:
            banded, seconds_banded = scored(
                window_arg(text), lalp_pass="banded", band_positions=positions
            )
            row = {"window": text, "positions": positions,
                   **compare(exact, banded, prompts, teachers, args.bootstrap, args.seed)}  # fmt: skip
            row["seconds_exact"], row["seconds_banded"] = seconds_exact, seconds_banded
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if "means" not in k}), flush=True)
    head = ["window", "positions", "step |err| mean", "step |err| max", "within-prompt Spearman",
            "within-prompt Kendall", "lalp_top same", "teacher Spearman", "teacher Kendall",
            "teacher Spearman bootstrap median [p05]", "share >= 0.95", "exact s", "banded s"]  # fmt: skip
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        md.append(
            f"| {r['window']} | {r['positions']} | {r['step_abs_error_mean']:.4f} | "
            f"{r['step_abs_error_max']:.3f} | {r['within_prompt_spearman']:.3f} | "
            f"{r['within_prompt_kendall']:.3f} | {r['lalp_top_agreement']:.3f} | "
            f"{r['teacher_spearman']:.2f} | {r['teacher_kendall']:.2f} | "
            f"{r['teacher_spearman_bootstrap_median']:.2f} "
            f"[{r['teacher_spearman_bootstrap_p05']:.2f}] | "
            f"{r['teacher_spearman_bootstrap_share_ge_095']:.3f} | {r['seconds_exact']:.1f} | "
            f"{r['seconds_banded']:.1f} |"
        )
    total = time.perf_counter() - began
    md.append("")
    md.append(f"{len(pool)} responses, {len(prompts)} prompts; {total:.0f} s in all")
    print("\n".join(md))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lalp_banded_agreement.md").write_text("\n".join(md) + "\n")
    (args.out / "lalp_banded_agreement.json").write_text(json.dumps(
        {"rows": rows, "seconds": total, "overrides": args.overrides}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
