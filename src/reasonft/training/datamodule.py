"""LightningDataModule over training records: tokenise, apply the length limit, mix the record
kinds' pools into optimiser steps (`train.per_step`).

The Trainer must be built with `use_distributed_sampler=False` (conf/trainer/default.yaml sets
it): the MixedBatchSampler already gives each rank its share, and Lightning would otherwise wrap
it in a DistributedSampler and break the fixed composition of the optimiser step. The sampler
yields each micro-batch's record indices with its step's totals, and `MicroBatches` collates them
into the batch (`batch["step_totals"]`, see step_totals.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from reasonft.data.prompts import IGNORE_INDEX, PromptFormat
from reasonft.data.records import DEFAULT_LOSS_TYPE, as_dataset, require_columns
from reasonft.training.collate import Collator, encode_record
from reasonft.training.sampler import PER_STEP_KEY, MixedBatchSampler

OVERLENGTH_POLICIES = ("drop", "truncate")
KEPT = ("ok", "truncated")
TRAIN_COLUMNS = ["input_ids", "labels", "loss_type_id", "prompt_id"]


def _encode_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    tokenizer: Any,
    prompt_format: PromptFormat,
    max_length: int,
    overlength: str,
    loss_types: tuple[str, ...],
    known_types: tuple[str, ...],
) -> dict[str, list[Any]]:
    """Tokenise a batch of records and tag each with its fate (`status`)."""
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "loss_type_id": [], "status": []}
    for row, prompt_id, problem, response, loss_type in zip(
        indices,
        batch["prompt_id"],
        batch["prompt"],
        batch["response"],
        batch["loss_type"],
        strict=True,
    ):
        where = f"train records row {row} (prompt_id={prompt_id!r})"
        if not isinstance(problem, str) or not isinstance(response, str):
            raise TypeError(f"{where}: `prompt` and `response` must be strings")
        if loss_type not in known_types:
            raise ValueError(
                f"{where}: loss_type={loss_type!r} has neither a loss term (loss.terms) nor a "
                f"share of the step ({PER_STEP_KEY}); expected one of {sorted(known_types)}"
            )
        ids: list[int] = []
        labels: list[int] = []
        if loss_type not in loss_types:
            status = "dropped_no_loss_term"
        else:
            ex = encode_record(problem, response, tokenizer, prompt_format)
            ids, labels, status = ex["input_ids"], ex["labels"], "ok"
            if len(ids) > max_length:
                if overlength == "drop":
                    status = "dropped_overlength"
                elif ex["prompt_len"] >= max_length:
                    status = "dropped_prompt_too_long"
                else:
                    ids, labels, status = ids[:max_length], labels[:max_length], "truncated"
            if status not in KEPT:
                ids, labels = [], []
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["loss_type_id"].append(loss_types.index(loss_type) if loss_type in loss_types else -1)
        out["status"].append(status)
    return out


class RecordsDataModule(pl.LightningDataModule):
    """Training records (`prompt_id`, `prompt`, `response`, optional `loss_type`, default
    `ce`) -> micro-batches.

    `loss_types` are the record types the loss trains on (`LossComposition.loss_types`; by
    default every kind of `per_step`, itself `{ce: 8}` by default), each with its share of
    every step in `per_step`; records of a type that has a `per_step` entry
    but no term are dropped and counted (e.g. UL records under an SFT loss), records of a type
    with neither stop the run. `columns` are the record columns the terms read
    (`LossComposition.columns`). `num_replicas`/`rank` are used only when no Trainer is attached.
    """

    def __init__(
        self,
        records: datasets.Dataset | list[dict[str, Any]],
        tokenizer: Any,
        prompt_format: PromptFormat | None = None,
        max_length: int = 512,
        overlength: str = "drop",
        micro_batch_size: int = 1,
        per_step: Mapping[str, int] | None = None,
        epoch_end: str = "shortest",
        seed: int = 0,
        num_workers: int = 0,
        loss_types: Sequence[str] | None = None,
        columns: Sequence[str] = (),
        group_by_length: bool = False,
        packing: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__()
        if overlength not in OVERLENGTH_POLICIES:
            raise ValueError(
                f"train.overlength={overlength!r}; choose one of {OVERLENGTH_POLICIES}"
            )
        if max_length < 2:
            raise ValueError(f"train.max_length={max_length} must be at least 2")
        per_step = dict(per_step) if per_step is not None else {DEFAULT_LOSS_TYPE: 8}
        loss_types = tuple(per_step) if loss_types is None else tuple(loss_types)
        if not loss_types:
            raise ValueError("datamodule: loss_types is empty; pass LossComposition.loss_types")
        self.records = as_dataset(records)
        self.tokenizer = tokenizer
        self.prompt_format = PromptFormat.coerce(prompt_format)
        self.max_length = max_length
        self.overlength = overlength
        self.micro_batch_size = micro_batch_size
        self.per_step = per_step
        self.epoch_end = epoch_end
        self.seed = seed
        self.num_workers = num_workers
        self.loss_types = loss_types
        self.columns = tuple(columns)
        self.group_by_length = group_by_length
        self.packing = packing
        self.num_replicas = num_replicas
        self.rank = rank
        self._resume_state: dict[str, int] | None = None
        self.train_set: datasets.Dataset | None = None
        self.sampler: MixedBatchSampler | None = None
        self.report: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._tokenise()

    def _tokenise(self) -> datasets.Dataset:
        ds = self.records
        require_columns(ds, ("prompt_id", "prompt", "response"), "train")
        require_columns(ds, self.columns, "train (columns the loss terms read)")
        if "loss_type" not in ds.column_names:
            ds = ds.add_column("loss_type", [DEFAULT_LOSS_TYPE] * len(ds))
        encoded = ds.map(
            _encode_batch,
            batched=True,
            with_indices=True,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "prompt_format": self.prompt_format,
                "max_length": self.max_length,
                "overlength": self.overlength,
                "loss_types": self.loss_types,
                "known_types": tuple(dict.fromkeys([*self.loss_types, *self.per_step])),
            },
            remove_columns=[
                c for c in ds.column_names if c not in ("prompt_id", "loss_type", *self.columns)
            ],
            desc="tokenise training records",
        )
        statuses = encoded["status"]
        record_types = encoded["loss_type"]
        keep = [i for i, status in enumerate(statuses) if status in KEPT]
        counts = Counter(statuses)
        kept_types = Counter(record_types[i] for i in keep)
        no_term = Counter(
            t for t, status in zip(record_types, statuses) if status == "dropped_no_loss_term"
        )
        self.report = {
            "n_records": len(ds),
            "n_train": len(keep),
            "by_loss_type": dict(sorted(kept_types.items())),
            "max_length": self.max_length,
            "overlength": self.overlength,
            "truncated": counts["truncated"],
            "dropped_overlength": counts["dropped_overlength"],
            "dropped_prompt_too_long": counts["dropped_prompt_too_long"],
            "dropped_no_loss_term": dict(sorted(no_term.items())),
        }
        if not keep:
            raise ValueError(
                f"train: no record left to train on after filtering: {self.report}. Raise "
                "train.max_length, use train.overlength=truncate, or pick a loss whose terms "
                "cover the records' loss_type."
            )
        train_set = encoded.select(keep).select_columns([*TRAIN_COLUMNS, *self.columns])
        for column in self.columns:
            nulls = [i for i, value in enumerate(train_set[column]) if value is None]
            if nulls:
                raise ValueError(
                    f"train: column {column!r}, which a loss term reads, is null on {len(nulls)} "
                    f"training record(s) (prompt_id={train_set[nulls[0]]['prompt_id']!r} first)"
                )
        self.report["n_tokens"] = int(sum(len(ids) for ids in train_set["input_ids"]))
        return train_set

    def sample_texts(self, limit: int = 1000) -> list[str]:
        """Up to `limit` training texts (prompt + response + terminator, evenly spaced over the
        records), as the tokenizer saw them: what a saved tokenizer must encode alike."""
        n = len(self.records)
        picks = sorted({i * n // limit for i in range(min(n, limit))})
        end = self.prompt_format.response_terminator(self.tokenizer)
        rows = self.records.select(picks)
        return [
            self.prompt_format.prompt_text(prompt, self.tokenizer) + response + end
            for prompt, response in zip(rows["prompt"], rows["response"])
        ]

    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.world_size, self.trainer.global_rank
        return self.num_replicas, self.rank

    def _lengths(self) -> list[int]:
        return [len(ids) for ids in self.train_set["input_ids"]]

    def _scored_tokens(self) -> list[int]:
        """Tokens each record's loss terms score: response labels after the first position
        (the first token has nothing to be predicted from)."""
        return [
            sum(label != IGNORE_INDEX for label in labels[1:])
            for labels in self.train_set["labels"]
        ]

    def build_sampler(self) -> MixedBatchSampler:
        self.setup("fit")
        world_size, rank = self._world()
        sampler = MixedBatchSampler(
            [self.loss_types[i] for i in self.train_set["loss_type_id"]],
            micro_batch_size=self.micro_batch_size,
            per_step=self.per_step,
            num_replicas=world_size,
            rank=rank,
            seed=self.seed,
            epoch_end=self.epoch_end,
            scored_tokens=self._scored_tokens(),
            lengths=self._lengths() if self.group_by_length else None,
            group_by_length=self.group_by_length,
        )
        trainer_accumulation = self.trainer.accumulate_grad_batches if self.trainer else None
        if trainer_accumulation not in (None, sampler.accumulate_grad_batches):
            raise ValueError(
                f"trainer.accumulate_grad_batches={trainer_accumulation} but "
                f"sum({PER_STEP_KEY}) / (train.micro_batch_size * world_size) "
                f"= {sampler.accumulate_grad_batches}; build the Trainer through train_student, "
                "which derives it"
            )
        self.report["sampler"] = sampler.report
        return sampler

    def train_dataloader(self) -> DataLoader:
        self.sampler = self.build_sampler()
        collate = Collator(
            self.tokenizer.pad_token_id, self.loss_types, packing=self.packing, columns=self.columns
        )
        # batch_size=None: the sampler yields whole micro-batches, which MicroBatches collates.
        self.loader = ResumableDataLoader(
            MicroBatches(self.train_set, collate),
            sampler=self.sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if self._resume_state:
            self.loader.resume(self._resume_state["epoch"], self._resume_state["micro_batches"])
        return self.loader

    # Lightning saves these with each checkpoint and restores them before the fit goes on, so
    # `train.ckpt_path=last` continues mid-epoch at the next micro-batch, not the epoch's start.
    def state_dict(self) -> dict[str, int]:
        loader = getattr(self, "loader", None)
        if loader is None:
            return {}
        return {"epoch": self.sampler.epoch, "micro_batches": loader.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_state = dict(state) or None
        if self._resume_state and getattr(self, "loader", None) is not None:
            self.loader.resume(state["epoch"], state["micro_batches"])


class MicroBatches(Dataset):
    """The collated micro-batch for what the sampler yields: `{"indices", "step_totals"}`."""

    def __init__(self, records: Sequence[dict[str, Any]], collate: Collator) -> None:
        self.records = records
        self.collate = collate

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, micro_batch: dict[str, Any]) -> dict[str, Any]:
        batch = self.collate([self.records[int(i)] for i in micro_batch["indices"]])
        batch["step_totals"] = micro_batch["step_totals"]
        return batch


class ResumableDataLoader(DataLoader):
    """Counts the micro-batches handed out in the current epoch; `resume(epoch, n)` makes the
    next pass over that epoch start at micro-batch n (the sampler skips those before it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = 0
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, micro_batches: int) -> None:
        self._resume = (int(epoch), int(micro_batches))

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        start = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            start = self._resume[1] if self._resume[1] < len(sampler) else 0
        self._resume = None
        sampler.start = start
        self.consumed = start
        for batch in super().__iter__():
            self.consumed += 1
            yield batch
