"""Self-sampling over the ranks of `trainer.predict` (`reasonft.ranks`), so `trainer.devices`
scales it.

Each rank samples its problems (`rank, rank + world, ...`) with the configured generator in one
call (the generator batches them, longest prompts first). The merged records come in problem
order, then sample order — the order one process gives. Because every sample is fixed by
(seed, prompt_id, sample_idx) whatever the batching, they are the records of one process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
import torch

from reasonft.data.prompts import PromptFormat
from reasonft.generation.inputs import check_problems
from reasonft.ranks import predict_trainer, run_over_ranks


class Sampling:
    """The generate stage's `RankWork`: one batch per rank, all of its problems."""

    kind = "samples"
    inputs = "problems or generator settings"

    def __init__(
        self, problems: datasets.Dataset, generator: Any, tokenizer: Any, prompt_format: PromptFormat
    ) -> None:
        self.problems, self.generator = problems, generator
        self.tokenizer, self.prompt_format = tokenizer, prompt_format
        self.n_rows = len(problems)

    def signature(self) -> str:
        """Identifies the problems (ids and prompts) and the sampling settings of a shard."""
        digest = hashlib.sha1()
        digest.update(json.dumps([str(p) for p in self.problems["prompt_id"]]).encode())
        digest.update(json.dumps(list(self.problems["prompt"])).encode())
        digest.update(repr(self.generator).encode())
        digest.update(repr(self.prompt_format).encode())
        return digest.hexdigest()

    def batches(self, rows: list[int]) -> list[list[int]]:
        return [rows] if rows else []

    def run(self, rows: list[int], model: torch.nn.Module) -> list[dict[str, Any]]:
        samples = self.generator.generate(
            self.problems.select(rows), model, self.tokenizer, prompt_format=self.prompt_format
        )
        return samples.to_list()


def in_problem_order(problems: datasets.Dataset, records: list[dict[str, Any]]) -> datasets.Dataset:
    """`records` in problem order, then sample order."""
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_problem.setdefault(str(record["prompt_id"]), []).append(record)
    rows: list[dict[str, Any]] = []
    for pid in problems["prompt_id"]:
        rows.extend(sorted(by_problem.pop(str(pid), []), key=lambda r: r["sample_idx"]))
    if by_problem:
        raise ValueError(f"generate: samples of unknown prompt ids {sorted(by_problem)[:10]}")
    return datasets.Dataset.from_list(rows)


def generate_with_trainer(
    problems: datasets.Dataset | list[dict[str, Any]],
    model: torch.nn.Module,
    tokenizer: Any,
    generator: Any,
    trainer: pl.Trainer | dict[str, Any] | None = None,
    out_dir: str | Path = "samples",
    prompt_format: PromptFormat | None = None,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """`generator.generate(problems, ...)` sharded over the ranks of `trainer.predict`; returns
    (records, report). Every rank returns the same.

    `generator` is any object with the `HFGenerator.generate` signature that samples with the
    model it is given. `trainer`: a Trainer or the keyword arguments for one.
    """
    problems = check_problems(problems)
    work = Sampling(problems, generator, tokenizer, PromptFormat.coerce(prompt_format))
    trainer = predict_trainer(trainer)
    samples = in_problem_order(problems, run_over_ranks(work, model, trainer, out_dir))
    report = {"samples": len(samples), "problems": len(problems), "processes": trainer.world_size}
    return samples, report

