"""Run work over the ranks of Lightning's `trainer.predict`; the generate and score stages use it.

The work is rows `0 .. n_rows - 1`; rank `r` of `w` takes the rows `r, r + w, ...`, runs them
batch by batch and writes its results atomically to `out_dir/<kind>-rank<r>-of-<w>.json`.
After a barrier every caller reads all shards back, rank by rank (with `strategy="ddp"` each
rank gets the same results; with `ddp_spawn` the launching process does). A shard written for
other inputs or settings (another signature) or for another sharding is refused.

Why not Lightning's `BasePredictionWriter`: it finds each batch's rows through an index batch
sampler (our loaders are iterable, so it warns on every run and hands over no indices), and it
must be added to the Trainer's callbacks, which a caller's own Trainer already fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from reasonft.io import write_json

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,  # one line per batch from every rank says nothing useful
    "use_distributed_sampler": False,  # each rank picks its own rows (`rank_rows`)
}


class RankWork(Protocol):
    """What the ranks share out. It is pickled into the ranks of `ddp_spawn`."""

    kind: str  # the results' name: "scores", "samples" (shard files, error messages)
    inputs: str  # what a foreign shard was written for: "records or scorer settings"
    n_rows: int

    def signature(self) -> str:
        """Identifies the inputs and settings; a shard with another signature is refused."""
        ...

    def batches(self, rows: list[int]) -> Iterable[Any]:
        """This rank's rows, batched (lazily: a rank may hold many)."""
        ...

    def run(self, batch: Any, model: torch.nn.Module) -> list[dict[str, Any]]:
        """The JSON-able results of one batch."""
        ...


def rank_rows(n_rows: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, n_rows, world_size))


def shard_path(out_dir: str | Path, kind: str, rank: int, world_size: int) -> Path:
    return Path(out_dir) / f"{kind}-rank{rank:05d}-of-{world_size:05d}.json"


class _Batches(IterableDataset):
    def __init__(self, work: RankWork, rows: list[int]) -> None:
        self.work, self.rows = work, rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.work.batches(self.rows))


class RankModule(pl.LightningModule):
    """Wraps the frozen model (so the strategy places it); `predict_step` runs one batch."""

    def __init__(self, model: torch.nn.Module, work: RankWork, out_dir: str | Path) -> None:
        super().__init__()
        self.model = model
        self.work = work
        self.out_dir = Path(out_dir)
        self.signature = work.signature()
        self._rows: list[int] = []
        self._results: list[dict[str, Any]] = []

    def predict_dataloader(self) -> DataLoader:
        self._rows = rank_rows(self.work.n_rows, self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(_Batches(self.work, self._rows), batch_size=None)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # the work moves token ids to the model's device itself

    def on_predict_epoch_start(self) -> None:
        self._results = []

    def predict_step(self, batch: Any, batch_idx: int) -> int:
        results = self.work.run(batch, self.model)
        self._results.extend(results)
        return len(results)

    def on_predict_epoch_end(self) -> None:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        shard = {
            "signature": self.signature,
            "rank": rank,
            "world_size": world,
            "rows": self._rows,
            "results": self._results,
        }
        write_json(shard, shard_path(self.out_dir, self.work.kind, rank, world))


def merge_shards(work: RankWork, out_dir: str | Path, world_size: int) -> list[dict[str, Any]]:
    """Every rank's results, rank by rank, each shard checked to belong to this run."""
    signature = work.signature()
    results: list[dict[str, Any]] = []
    for rank in range(world_size):
        path = shard_path(out_dir, work.kind, rank, world_size)
        if not path.exists():
            raise FileNotFoundError(f"{path}: rank {rank} wrote no {work.kind} (did it fail?)")
        shard = json.loads(path.read_text())
        if shard["signature"] != signature:
            raise ValueError(
                f"{path} was written for other {work.inputs}; remove it and rerun"
            )
        if shard["rows"] != rank_rows(work.n_rows, rank, world_size):
            raise ValueError(f"{path} holds the rows of another sharding; remove it and rerun")
        results.extend(shard["results"])
    return results


def predict_trainer(trainer: pl.Trainer | dict[str, Any] | None) -> pl.Trainer:
    """`trainer`, or a Trainer from these keyword arguments merged over `TRAINER_DEFAULTS`."""
    if isinstance(trainer, pl.Trainer):
        return trainer
    return pl.Trainer(**{**TRAINER_DEFAULTS, **(trainer or {})})


def run_over_ranks(
    work: RankWork, model: torch.nn.Module, trainer: pl.Trainer, out_dir: str | Path
) -> list[dict[str, Any]]:
    """`work` over the ranks of `trainer.predict`; every rank returns all ranks' results.

    Lightning injects no sampler: the loader is iterable and each rank picks its own rows.
    A last barrier follows the merge, so rank 0 may remove `out_dir` once this returns.
    """
    trainer.predict(RankModule(model, work, out_dir), return_predictions=False)
    trainer.strategy.barrier(f"reasonft-{work.kind}-written")
    results = merge_shards(work, out_dir, trainer.world_size)
    trainer.strategy.barrier(f"reasonft-{work.kind}-merged")
    return results
