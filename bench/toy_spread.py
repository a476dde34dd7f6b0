"""How much does the toy base student depend on its build seed and the floating-point path?

Builds the base student (the config's `model.build`, changed by `--set KEY=VALUE`) for every
build seed x floating-point path and measures its greedy accuracy on the test split, overall and
per difficulty, then prints mean and spread. A floating-point path is a torch CPU kernel family
(`ATEN_CPU_CAPABILITY`: `native` = what this CPU picks, or `avx2`, `default` = no SIMD) and an
intra-op thread count; each build runs in its own process, because the capability is read when
torch is imported. The rows also show a hash of the weights, so one sees which paths really
change them.

    .venv/bin/python bench/toy_spread.py                               # seeds 0 1 2, native + avx2
    .venv/bin/python bench/toy_spread.py --seeds 0 1 2 3 --capabilities native avx2 default \\
        --threads 1 2 --set steps=1500 --out spread.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

NATIVE = "native"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def weights_digest(folder: str) -> str:
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def worker(seed: int, threads: int, changes: dict[str, Any], cache: Path) -> dict[str, Any]:
    """Build one student in this process (its FP path) and measure it."""
    import torch
    import transformers
    from hydra.utils import instantiate

    # the sibling script: the same accuracy check and the same default settings
    from toy_check import default_world_and_build, greedy_accuracy

    from reasonft.models.loading import load_student, load_tokenizer

    torch.set_num_threads(threads)
    world, build_cfg = default_world_and_build()
    build_cfg.update(changes)
    build_cfg.update(seed=seed, num_threads=threads, shipped=False)  # measured builds, never the shipped copy
    builder = instantiate(build_cfg, world=world)
    started = time.perf_counter()
    path = builder.build(cache)
    build_seconds = time.perf_counter() - started
    report = json.loads((Path(path) / "toy_build.json").read_text())
    tokenizer = load_tokenizer(path)
    model = load_student(path, dtype="float32", attn_implementation="sdpa")
    accuracy, by_ops = greedy_accuracy(model, tokenizer, world)
    return {
        "seed": seed,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_model(),
        "build_s": build_seconds,
        "reported_build_s": report["wall_seconds"],  # the build's own time, also when reused
        "reported_cpu_s": report["cpu_seconds"],
        "final_loss": report.get("final_loss"),
        "weights": weights_digest(path),
        "folder": Path(path).name,
        "accuracy": accuracy,
        "by_ops": {str(k): v for k, v in by_ops.items()},
    }


def run_one(seed: int, capability: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability != NATIVE:
        env["ATEN_CPU_CAPABILITY"] = capability
    # one cache folder per path: a student built before the cache key named the FP path would
    # otherwise be reused across paths
    cache = args.cache / f"{capability}-x{threads}"
    command = [sys.executable, __file__, "--worker", str(seed), str(threads), "--cache", str(cache)]
    for change in args.set:
        command += ["--set", change]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the build for seed {seed}, capability {capability} failed")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["asked_capability"] = capability
    return row


def parse_changes(specs: list[str]) -> dict[str, Any]:
    changes = {}
    for spec in specs:
        key, _, text = spec.partition("=")
        try:
            changes[key] = json.loads(text)
        except json.JSONDecodeError:
            changes[key] = text
    return changes


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in rows]
    mean = statistics.fmean(accuracies)
    by_ops = {}
    for ops in sorted({k for r in rows for k in r["by_ops"]}, key=int):
        values = [r["by_ops"][ops] for r in rows if ops in r["by_ops"]]
        by_ops[ops] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    return {
        "n": len(rows),
        "mean": mean,
        "min": min(accuracies),
        "max": max(accuracies),
        "max_deviation_from_mean": max(abs(a - mean) for a in accuracies),
        "stdev": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "by_ops": by_ops,
        "build_s_max": max(r["reported_build_s"] for r in rows),
        "distinct_weights": len({r["weights"] for r in rows}),
    }


def print_table(
    rows: list[dict[str, Any]], summary: dict[str, Any], changes: dict[str, Any]
) -> None:
    from rich.console import Console
    from rich.table import Table

    first = rows[0]
    title = (
        f"toy base student spread (test split, greedy) — cpu: {first['cpu']}, torch {first['torch']}, "
        f"transformers {first['transformers']}, settings changed: {changes or 'none'}"
    )
    table = Table(title=title)
    ops = list(summary["by_ops"])
    for column in (
        "seed",
        "capability",
        "threads",
        "build s",
        "build cpu s",
        "final loss",
        "weights",
        "greedy acc",
        *[f"{k} ops" for k in ops],
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["seed"]),
            r["capability"],
            str(r["threads"]),
            f"{r['reported_build_s']:.0f}",
            f"{r['reported_cpu_s']:.0f}",
            f"{r['final_loss']:.4f}",
            r["weights"],
            f"{r['accuracy']:.3f}",
            *[f"{r['by_ops'].get(k, float('nan')):.3f}" for k in ops],
        )
    s = summary
    table.add_row(
        "mean",
        "",
        "",
        "",
        "",
        "",
        "",
        f"{s['mean']:.3f}",
        *[f"{s['by_ops'][k]['mean']:.3f}" for k in ops],
    )
    table.add_row(
        "min..max",
        "",
        "",
        "",
        "",
        "",
        "",
        f"{s['min']:.3f}..{s['max']:.3f}",
        *[f"{s['by_ops'][k]['min']:.2f}..{s['by_ops'][k]['max']:.2f}" for k in ops],
    )
    Console(width=max(Console().width, 150)).print(table)
    print(
        f"greedy accuracy {s['mean']:.3f} +/- {s['max_deviation_from_mean']:.3f} (largest deviation "
        f"from the mean; stdev {s['stdev']:.3f}) over {s['n']} builds with {s['distinct_weights']} "
        f"distinct weight sets; slowest build {s['build_s_max']:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--capabilities",
        nargs="+",
        default=[NATIVE, "avx2"],
        help="ATEN_CPU_CAPABILITY values (native: leave it to torch)",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model.build setting to change (JSON value), e.g. steps=1500",
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("REASONFT_CACHE", ".cache/reasonft"))
    )
    parser.add_argument("--out", type=Path, help="also write rows and summary as JSON here")
    parser.add_argument(
        "--worker", nargs=2, type=int, metavar=("SEED", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    changes = parse_changes(args.set)

    if args.worker:
        seed, threads = args.worker
        sys.stdout.flush()
        print(json.dumps(worker(seed, threads, changes, args.cache)))
        return

    rows = []
    for seed in args.seeds:
        for capability in args.capabilities:
            for threads in args.threads:
                rows.append(run_one(seed, capability, threads, args))
                r = rows[-1]
                print(
                    f"seed {seed} {r['capability']} x{threads}: greedy {r['accuracy']:.3f} "
                    f"({r['build_s']:.0f} s build, weights {r['weights']})",
                    flush=True,
                )
    summary = summarise(rows)
    print_table(rows, summary, changes)
    if args.out:
        args.out.write_text(
            json.dumps({"changes": changes, "rows": rows, "summary": summary}, indent=2)
        )


if __name__ == "__main__":
    main()
