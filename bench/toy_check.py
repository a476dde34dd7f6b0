"""Is the toy world still fit for purpose? Build toy students side by side and check each.

For each student setting (the config's `model.build` by default; `--variant` adds others, e.g.
`--variant steps=650`), it builds (or reuses) the student and reports, next to each other:
- greedy accuracy on the test split, per difficulty (number of operations),
- the median PPL given the prompt of each teacher's correct responses (what the toy presets
  select on: score=ppl_given_prompt),
- greedy accuracy after a short plain SFT on the verified teacher data of the train split
  (the room fine-tuning has), with its gain over the base.

    .venv/bin/python bench/toy_check.py                                  # the default student
    .venv/bin/python bench/toy_check.py --variant steps=650 --variant num_layers=4 --sft-steps 300
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
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from reasonft.config import compose_config
from reasonft.data.prompts import PromptFormat
from reasonft.generation.hf import HFGenerator
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.models.toy import train_plain
from reasonft.scoring.api import score
from reasonft.verify.extract import extract_answer


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def default_world_and_build() -> tuple[Any, dict[str, Any]]:
    """The default toy world and the default `model.build` settings, resolved (the prompt format
    interpolates data keys) and without the world, to update and instantiate with `world=`."""
    cfg = compose_config(overrides=["model=toy", "data=toy"])
    build = OmegaConf.to_container(cfg.model.build, resolve=True)
    return instantiate(cfg.data.source), {k: v for k, v in build.items() if k != "world"}


def greedy_accuracy(model, tokenizer, world) -> tuple[float, dict[int, float]]:
    problems = world.problem_list("test")
    samples = HFGenerator(n=1, temperature=0, max_new_tokens=160, batch_size=200, progress=False).generate(
        world.problems("test"), model, tokenizer
    )
    right: dict[int, list[bool]] = {}
    for problem, sample in zip(problems, samples):
        right.setdefault(problem.difficulty, []).append(extract_answer(sample["response"]) == str(problem.answer))
    every = [ok for oks in right.values() for ok in oks]
    return sum(every) / len(every), {d: sum(v) / len(v) for d, v in sorted(right.items())}


def check(build_cfg, world, sft_steps: int, sft_lr: float, cache: Path) -> dict[str, Any]:
    builder = instantiate(build_cfg, world=world)
    started = time.perf_counter()
    path = builder.build(cache)
    build_seconds = time.perf_counter() - started
    tokenizer = load_tokenizer(path)
    model = load_student(path, dtype="float32", attn_implementation="sdpa")
    base, base_by = greedy_accuracy(model, tokenizer, world)

    pool = [r for r in world.teacher_pool("train") if extract_answer(r["response"]) == str(r["answer"])]
    scored = score(pool, model, tokenizer, method="ppl", condition_on_prompt=True)
    ppl = {
        teacher: statistics.median(r["ppl"] for r in scored if r["source"] == teacher)
        for teacher in sorted({r["source"] for r in scored})
    }
    examples = [PromptFormat().encode(r["prompt"], r["response"], tokenizer) for r in pool]
    started = time.perf_counter()
    train_plain(model, examples, steps=sft_steps, lr=sft_lr, batch_size=32, pad_id=tokenizer.pad_token_id, seed=1)
    sft_seconds = time.perf_counter() - started
    after, after_by = greedy_accuracy(model, tokenizer, world)
    return {
        "build_s": build_seconds, "base": base, "base_by_ops": base_by, "ppl": ppl,
        "sft": after, "sft_by_ops": after_by, "sft_s": sft_seconds, "sft_examples": len(examples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="model.build settings of another student to check beside the default")
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--cache", type=Path, default=Path(".cache/reasonft"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    world, default_build = default_world_and_build()
    variants = {"default": {}}
    for spec in args.variant:
        variants[spec] = {k: _value(v) for k, v in (item.split("=", 1) for item in spec.split(","))}

    results = {}
    for name, changes in variants.items():
        build_cfg = {**default_build, **changes}
        results[name] = check(build_cfg, world, args.sft_steps, args.sft_lr, args.cache)

    table = Table(title=f"toy students (test split, greedy; plain SFT {args.sft_steps} steps x 32, lr {args.sft_lr})")
    teachers = sorted({t for r in results.values() for t in r["ppl"]})
    for column in ("student", "build s", "base acc", "by ops 1/2/3..", *[f"PPL {t}" for t in teachers],
                   "SFT acc", "by ops 1/2/3..", "gain"):
        table.add_column(column, justify="left" if column == "student" else "right")
    for name, r in results.items():
        table.add_row(
            name, f"{r['build_s']:.0f}", f"{r['base']:.3f}",
            "/".join(f"{v:.2f}" for v in r["base_by_ops"].values()),
            *[f"{r['ppl'].get(t, float('nan')):.1f}" for t in teachers],
            f"{r['sft']:.3f}", "/".join(f"{v:.2f}" for v in r["sft_by_ops"].values()),
            f"{r['sft'] - r['base']:+.3f}",
        )
    console = Console()
    Console(width=max(console.width, 160)).print(table)


if __name__ == "__main__":
    main()
