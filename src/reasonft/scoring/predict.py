"""Scoring over the ranks of `trainer.predict` (`reasonft.ranks`), so `strategy=` and
`trainer.devices` scale it.

Each rank scores its rows (`rank, rank + world, ...`) in length-sorted batches under
`batch_tokens`; the merged results are attached in the original record order, and the report
is the one `Scorer.__call__` gives, plus the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch

from reasonft.data.records import as_dataset
from reasonft.ranks import predict_trainer, run_over_ranks
from reasonft.scoring.columns import attach_scores
from reasonft.scoring.scorer import Scorer
from reasonft.scoring.token_steps import ScoringExample


class Scoring:
    """The score stage's `RankWork`: records scored by `scorer`, a length-sorted batch at a time."""

    kind = "scores"
    inputs = "records or scorer settings"

    def __init__(self, records: datasets.Dataset, scorer: Scorer, tokenizer: Any) -> None:
        self.records, self.scorer, self.tokenizer = records, scorer, tokenizer
        self.n_rows = len(records)

    def signature(self) -> str:
        """Identifies the records (count and response lengths) and scorer settings of a shard."""
        column = self.records.with_format("arrow")["response"]
        lengths = pc.utf8_length(column).to_numpy(zero_copy_only=False).astype("int64")
        scorer = self.scorer
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
        digest.update(json.dumps([len(self.records), settings]).encode())
        return digest.hexdigest()

    def batches(self, rows: list[int]) -> Iterator[list[ScoringExample]]:
        return self.scorer.batches(self.records, self.tokenizer, rows)

    def run(self, batch: list[ScoringExample], model: torch.nn.Module) -> list[dict[str, Any]]:
        return self.scorer.score_batch(batch, model)


def score_with_trainer(
    ds: datasets.Dataset | list[dict[str, Any]],
    model: torch.nn.Module,
    tokenizer: Any,
    scorer: Scorer,
    trainer: pl.Trainer | dict[str, Any] | None = None,
    out_dir: str | Path = "scores",
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Score `ds` over the ranks of `trainer.predict` (any strategy); returns (the records with
    score columns, report), the same on every rank.

    `trainer`: a Trainer or the keyword arguments for one (over `ranks.TRAINER_DEFAULTS`).
    """
    records = as_dataset(ds)
    scorer.check_records(records)
    started = time.perf_counter()
    trainer = predict_trainer(trainer)
    results = run_over_ranks(Scoring(records, scorer, tokenizer), model, trainer, out_dir)
    report = scorer.report(results, model, time.perf_counter() - started)
    return attach_scores(records, results), {**report, "processes": trainer.world_size}
