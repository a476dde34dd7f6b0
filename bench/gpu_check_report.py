"""bench/gpu_check.py's report as Markdown: the steps, then the figures of each, then tracebacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    mode = f"dry run ({report['why_dry']})" if report["dry_run"] else "CUDA"
    took = f"Started {report['started']}, {report.get('seconds', 0):.0f} s in all."
    lines = [f"# GPU check — {mode}", "", took, ""]
    lines += _table(
        ["step", "status", "seconds", "limit s", "note"],
        [
            [
                s["name"],
                s["status"],
                s["seconds"],
                s["limit_s"],
                (s.get("reason") or "").replace("|", "/").replace("\n", " ")[:200],
            ]
            for s in report["steps"]
        ],
    )
    steps = {s["name"]: s for s in report["steps"]}
    for step in report["steps"]:
        for part, why in step.get("skipped_parts", {}).items():
            lines.append(f"- {step['name']}: {part} skipped — {why}")
    train = steps.get("train", {}).get("result", {})
    if train.get("runs"):
        matmul = (
            f"bf16 matmul {train['matmul_bf16']['n']}³ in this run: "
            f"{train['matmul_bf16']['tflops_per_s']:.1f} TFLOP/s "
            f"(datasheet dense bf16 {train['datasheet_dense_bf16_tflops_per_s']:.0f})."
        )
        lines += ["", "## Training (bf16-mixed, micro-batch 1)", "", matmul, ""]
        lines += _table(
            [
                "engine",
                "tokens",
                "act. ckpt",
                "tokens/s",
                "model TFLOP/s",
                "MFU (datasheet)",
                "MFU (matmul)",
                "peak MiB",
                "error",
            ],
            [
                [
                    r["engine"],
                    r["length"],
                    r["activation_checkpointing"],
                    r.get("tokens_per_s"),
                    r.get("model_tflops_per_s"),
                    r.get("mfu_datasheet"),
                    r.get("mfu_measured_matmul"),
                    r.get("peak_memory_mb"),
                    "yes" if "error" in r else "",
                ]
                for r in train["runs"]
            ],
        )
        if train.get("pairs"):
            lines += [""] + _table(
                ["tokens", "act. ckpt", "tokens/s reasonft / TRL", "peak memory reasonft / TRL"],
                [
                    [
                        p["length"],
                        p["activation_checkpointing"],
                        p["tokens_per_s_ratio_reasonft_over_trl"],
                        p["peak_memory_ratio_reasonft_over_trl"],
                    ]
                    for p in train["pairs"]
                ],
            )
    score = steps.get("score", {}).get("result", {})
    if "lalp" in score:
        pool = (
            f"{score['responses']} responses, mean {score['mean_response_tokens']:.0f} "
            f"response tokens, {score['steps']} steps, LALP k = {score['window']}."
        )
        lines += ["", "## Scoring (bf16)", "", pool, ""]
        lines += _table(
            ["method", "seconds", "response tokens/s", "peak MiB"],
            [
                [
                    m,
                    score[m]["seconds"],
                    score[m]["response_tokens_per_s"],
                    score[m]["peak_memory_mb"],
                ]
                for m in score.get("methods", ("galp", "lalp"))
                if m in score
            ],
        )
        over = [k for k in score if k.endswith("_over_galp_seconds")]
        ratios = (
            "; ".join(f"{k.removesuffix('_over_galp_seconds')}/galp time {score[k]:.2f}" for k in over)
            + f"; exact LALP window tokens / response tokens {score['lalp_over_galp_window_tokens']:.2f}."
        )
        lines += ["", ratios]
    gen = steps.get("generate", {}).get("result", {})
    if "hf_generator_tokens_per_s" in gen:
        lines += ["", "## Generation (hf backend)", ""]
        lines += _table(
            ["model", "samples", "new tokens", "HFGenerator tokens/s", "native tokens/s", "ratio"],
            [
                [
                    gen["label"],
                    gen["samples"],
                    gen["max_new_tokens"],
                    gen["hf_generator_tokens_per_s"],
                    gen["native_tokens_per_s"],
                    gen["ratio_hf_generator_over_native"],
                ]
            ],
        )
    tests = steps.get("gpu_tests", {}).get("result", {})
    if tests.get("tests"):
        lines += ["", "## gpu-marked tests", ""]
        lines += _table(
            ["test", "outcome", "seconds", "reason"],
            [
                [
                    t,
                    e["outcome"],
                    e["seconds"],
                    (e.get("reason") or e.get("error", ""))[-160:]
                    .replace("|", "/")
                    .replace("\n", " "),
                ]
                for t, e in tests["tests"].items()
            ],
        )
    failed = [s for s in report["steps"] if s.get("error")]
    if failed:
        lines += ["", "## Tracebacks", ""]
        for step in failed:
            lines += [f"### {step['name']}", "", "```", step["error"].rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], outdir: Path) -> None:
    (outdir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (outdir / "gpu_check.md").write_text(markdown(report))
