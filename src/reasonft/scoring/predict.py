"""Scoring through Lightning's `trainer.predict`, so `strategy=`/`trainer.devices` scale it.

Each rank scores the rows `rank, rank + world, ...` (length-sorted in batches under
`batch_tokens`), and writes its results atomically to `out_dir/scores-rank<r>-of-<w>.json`.
After a barrier the shards are merged back in the original record order by every caller
(with `strategy="ddp"` each rank gets the same merged records; with `ddp_spawn` the launching
process does), and `scorer.report` is the report one process gives. A shard written for other
records or another scorer setting is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from reasonft.data.records import as_dataset
from reasonft.io import write_json
from reasonft.scoring.scorer import Scorer, attach_scores, summarize
from reasonft.scoring.token_steps import ScoringExample

log = logging.getLogger(__name__)

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,  # one line per batch from every rank says nothing useful
    "use_distributed_sampler": False,  # each rank picks its own rows (see ScoringModule)
}


class _RankBatches(IterableDataset):
    """The length-sorted batches of one rank's rows, tokenised lazily block by block."""

    def __init__(
        self, scorer: Scorer, records: datasets.Dataset, tokenizer: Any, indices: Sequence[int]
    ) -> None:
        self.scorer, self.records, self.tokenizer, self.indices = (
            scorer,
            records,
            tokenizer,
            indices,
        )

    def __iter__(self) -> Iterator[list[ScoringExample]]:
        return self.scorer.batches(self.records, self.tokenizer, self.indices)


def run_signature(records: datasets.Dataset, scorer: Scorer) -> str:
    """Identifies the records (count and response lengths) and scorer settings of a shard."""
    column = records.with_format("arrow")["response"]
    lengths = pc.utf8_length(column).to_numpy(zero_copy_only=False).astype("int64")
    settings = [
        scorer.method,
        repr(scorer.window),
        scorer.window_rounding,
        scorer.conditioning,
        repr(scorer.steps),
    ]
    if scorer.lalp_pass != "exact":  # exact LALP's signatures stay those of earlier shards
        settings += [scorer.lalp_pass, scorer.band_positions]
    digest = hashlib.sha1(lengths.tobytes())
    digest.update(json.dumps([len(records), settings]).encode())
    return digest.hexdigest()


def shard_path(out_dir: str | Path, rank: int, world_size: int) -> Path:
    return Path(out_dir) / f"scores-rank{rank:05d}-of-{world_size:05d}.json"


class ScoringModule(pl.LightningModule):
    """Wraps a frozen causal LM; `predict_step` scores one length-sorted batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        scorer: Scorer,
        records: datasets.Dataset,
        out_dir: str | Path,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.records = records
        self.out_dir = Path(out_dir)
        self.signature = run_signature(records, scorer)
        self._results: list[dict[str, Any]] = []

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        indices = range(rank, len(self.records), world)
        return DataLoader(
            _RankBatches(self.scorer, self.records, self.tokenizer, indices), batch_size=None
        )

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # token ids are moved to the model's device batch by batch when scored

    def on_predict_epoch_start(self) -> None:
        self._results = []

    def predict_step(self, batch: list[ScoringExample], batch_idx: int) -> int:
        self._results.extend(self.scorer.score_batch(batch, self.model))
        return len(batch)

    def on_predict_epoch_end(self) -> None:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        shard = {
            "signature": self.signature,
            "rank": rank,
            "world_size": world,
            "results": self._results,
        }
        write_json(shard, shard_path(self.out_dir, rank, world))


def merge_shards(
    records: datasets.Dataset, scorer: Scorer, out_dir: str | Path, world_size: int
) -> datasets.Dataset:
    """Read every rank's shard, check it belongs to this run, and add the scores in record order."""
    signature = run_signature(records, scorer)
    results: list[dict[str, Any]] = []
    for rank in range(world_size):
        path = shard_path(out_dir, rank, world_size)
        if not path.exists():
            raise FileNotFoundError(f"{path}: rank {rank} wrote no scores (did it fail?)")
        shard = json.loads(path.read_text())
        if shard["signature"] != signature:
            raise ValueError(
                f"{path} was written for other records or scorer settings; remove it and rerun"
            )
        results.extend(shard["results"])
    scorer.report = summarize(results)
    return attach_scores(records, results)


def stage_report(scorer: Scorer, model: torch.nn.Module, seconds: float) -> dict[str, Any]:
    """The report `Scorer.__call__` gives, from the merged counts left in `scorer.report`."""
    report = {
        "method": scorer.method,
        "max_length": scorer.resolve_max_length(model),
        "overlength": scorer.overlength,
        **scorer.report,
        "seconds": round(seconds, 3),
    }
    if report["truncated"] or report["dropped"]:
        log.warning(
            "score: records longer than score.max_length=%d prompt + response tokens: %d "
            "truncated, %d dropped (score.overlength=%s; the longest response has %d tokens)",
            report["max_length"],
            report["truncated"],
            report["dropped"],
            scorer.overlength,
            report["longest_response_tokens"],
        )
    return report


def score_with_trainer(
    ds: datasets.Dataset | list[dict[str, Any]],
    model: torch.nn.Module,
    tokenizer: Any,
    scorer: Scorer,
    trainer: pl.Trainer | dict[str, Any] | None = None,
    out_dir: str | Path = "scores",
) -> datasets.Dataset:
    """Score `ds` with `trainer.predict` (any strategy), returning the records with score columns.

    `trainer` is a Trainer or the keyword arguments for one (merged over `TRAINER_DEFAULTS`).
    Lightning injects no sampler: the loader is iterable and each rank picks its own rows.
    `scorer.report` is then the report `Scorer.__call__` gives. Every rank returns the same
    records, after a last barrier (so rank 0 may remove `out_dir` once this returns).
    """
    records = as_dataset(ds)
    scorer.check_records(records)
    started = time.perf_counter()
    if not isinstance(trainer, pl.Trainer):
        trainer = pl.Trainer(**{**TRAINER_DEFAULTS, **(trainer or {})})
    module = ScoringModule(model, tokenizer, scorer, records, out_dir)
    trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier("reasonft-scores-written")
    scored = merge_shards(records, scorer, out_dir, trainer.world_size)
    scorer.report = stage_report(scorer, model, time.perf_counter() - started)
    trainer.strategy.barrier("reasonft-scores-merged")
    return scored
