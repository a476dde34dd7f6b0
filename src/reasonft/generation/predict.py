"""Self-sampling through Lightning's `trainer.predict`, so `trainer.devices` scales it.

Each rank samples the problems `rank, rank + world, ...` with the configured generator and
writes its records atomically to `out_dir/samples-rank<r>-of-<w>.json`. After a barrier every
caller merges the shards back in problem order, then sample order — the order one process gives.
Because every sample is fixed by (seed, prompt_id, sample_idx) whatever the batching, the merged
records are those of one process. A shard written for other problems or generator settings is
refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from reasonft.data.prompts import PromptFormat
from reasonft.generation.hf import check_problems
from reasonft.io import write_json

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,  # the generator shows its own samples/s bar
    "use_distributed_sampler": False,  # each rank picks its own problems (see GenerationModule)
}


def run_signature(problems: datasets.Dataset, generator: Any, prompt_format: PromptFormat) -> str:
    """Identifies the problems (ids and prompts) and the sampling settings of a shard."""
    digest = hashlib.sha1()
    digest.update(json.dumps([str(p) for p in problems["prompt_id"]]).encode())
    digest.update(json.dumps(list(problems["prompt"])).encode())
    digest.update(repr(generator).encode())
    digest.update(repr(prompt_format).encode())
    return digest.hexdigest()


def shard_path(out_dir: str | Path, rank: int, world_size: int) -> Path:
    return Path(out_dir) / f"samples-rank{rank:05d}-of-{world_size:05d}.json"


def rank_problems(n_problems: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, n_problems, world_size))


class GenerationModule(pl.LightningModule):
    """Wraps the frozen student; one `predict_step` samples all of this rank's problems."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        generator: Any,
        problems: datasets.Dataset,
        prompt_format: PromptFormat,
        out_dir: str | Path,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.generator = generator
        self.problems = problems
        self.prompt_format = prompt_format
        self.out_dir = Path(out_dir)
        self.signature = run_signature(problems, generator, prompt_format)

    def predict_dataloader(self) -> DataLoader:
        rows = rank_problems(len(self.problems), self.trainer.global_rank, self.trainer.world_size)
        # One item: the generator batches (longest prompts first) across all of this rank's rows.
        return DataLoader([rows], batch_size=None)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # row indices; the generator moves token ids to the model's device

    def predict_step(self, rows: Sequence[int], batch_idx: int) -> int:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        records: list[dict[str, Any]] = []
        if rows:
            subset = self.problems.select(list(rows))
            samples = self.generator.generate(
                subset, self.model, self.tokenizer, prompt_format=self.prompt_format
            )
            records = samples.to_list()
        shard = {
            "signature": self.signature,
            "rank": rank,
            "world_size": world,
            "rows": list(rows),
            "records": records,
        }
        write_json(shard, shard_path(self.out_dir, rank, world))
        return len(records)


def merge_shards(
    problems: datasets.Dataset,
    generator: Any,
    prompt_format: PromptFormat,
    out_dir: str | Path,
    world_size: int,
) -> datasets.Dataset:
    """Every rank's records, checked to belong to this run, in problem order then sample order."""
    signature = run_signature(problems, generator, prompt_format)
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for rank in range(world_size):
        path = shard_path(out_dir, rank, world_size)
        if not path.exists():
            raise FileNotFoundError(f"{path}: rank {rank} wrote no samples (did it fail?)")
        shard = json.loads(path.read_text())
        if shard["signature"] != signature:
            raise ValueError(
                f"{path} was written for other problems or generator settings; remove it and rerun"
            )
        if shard["rows"] != rank_problems(len(problems), rank, world_size):
            raise ValueError(f"{path} holds the problems of another sharding; remove it and rerun")
        for record in shard["records"]:
            by_problem.setdefault(str(record["prompt_id"]), []).append(record)
    rows: list[dict[str, Any]] = []
    for pid in problems["prompt_id"]:
        rows.extend(sorted(by_problem.pop(str(pid), []), key=lambda r: r["sample_idx"]))
    if by_problem:
        raise ValueError(f"{out_dir}: samples of unknown prompt ids {sorted(by_problem)[:10]}")
    return datasets.Dataset.from_list(rows)


def generate_with_trainer(
    problems: datasets.Dataset | list[dict[str, Any]],
    model: torch.nn.Module,
    tokenizer: Any,
    generator: Any,
    trainer: pl.Trainer | dict[str, Any] | None = None,
    out_dir: str | Path = "samples",
    prompt_format: PromptFormat | None = None,
) -> datasets.Dataset:
    """`generator.generate(problems, ...)` sharded over the ranks of `trainer.predict`.

    `generator` is any object with the `HFGenerator.generate` signature that samples with the
    model it is given. `trainer` is a Trainer or the keyword arguments for one (merged over
    `TRAINER_DEFAULTS`). Every rank returns the same merged records, after a last barrier (so
    rank 0 may remove `out_dir` once this returns).
    """
    problems = check_problems(problems)
    prompt_format = PromptFormat.coerce(prompt_format)
    if not isinstance(trainer, pl.Trainer):
        trainer = pl.Trainer(**{**TRAINER_DEFAULTS, **(trainer or {})})
    module = GenerationModule(model, tokenizer, generator, problems, prompt_format, out_dir)
    trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier("reasonft-samples-written")
    merged = merge_shards(problems, generator, prompt_format, out_dir, trainer.world_size)
    trainer.strategy.barrier("reasonft-samples-merged")
    return merged
