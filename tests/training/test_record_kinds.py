"""A new kind of record with its own loss term, added from this file alone: a third pool
(`ce_weighted`, records carrying a `weight` column) trained by `WeightedCrossEntropyTerm`, both
configured through Hydra overrides of the shipped config. Checks each optimiser step's
composition, that the term's logged value is the hand-computed one on the first step, and the
start-up checks that name the key when a kind lacks a term or a share of the step."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor

import reasonft.config
from reasonft.data.prompts import PromptFormat
from reasonft.training.collate import encode_record
from reasonft.training.losses import LossInputs, LossTerm
from reasonft.training.train import check_train_config, train_student

# pytest imports this file as a top-level module (tests/ is no package).
MODULE = Path(__file__).stem
PER_STEP = {"ce": 2, "ul": 1, "ce_weighted": 1}
WEIGHTS = [0.5, 2.0, 3.0, 0.25]


class WeightedCrossEntropyTerm(LossTerm):
    """`-w * log p(y_t)`, `w` the record's `weight` column."""

    columns = ("weight",)

    def token_loss(self, inputs: LossInputs) -> Tensor:
        return -inputs.logp * inputs.columns["weight"][:, None]


class KindRecorder(pl.Callback):
    """Writes, per micro-batch, the optimiser step, its records' kinds and prompt ids, and the
    metrics logged when the step ended (JSON lines)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        kinds = [batch["loss_types"][int(i)] for i in batch["loss_type"]]
        self._write({"step": trainer.global_step, "kinds": kinds, "prompt_id": batch["prompt_id"]})

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self._write({"after_step": trainer.global_step, "metrics": metrics})

    def _write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def overrides(tmp_path: Path, per_step: str = "{ce:2,ul:1,ce_weighted:1}") -> list[str]:
    return [
        "logger=none",
        "loss=oxa_full",
        f"+loss.terms.w._target_={MODULE}.WeightedCrossEntropyTerm",
        "+loss.terms.w.loss_type=ce_weighted",
        "+loss.terms.w.reduction=sequence",
        f"train.per_step={per_step}",
        "train.micro_batch_size=2",
        "train.max_length=128",
        "train.scheduler=null",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "callbacks.progress_bar=null",
        "callbacks.lr_monitor=null",
        "callbacks.checkpoint=null",
        f"+callbacks.kinds._target_={MODULE}.KindRecorder",
        f"+callbacks.kinds.path={tmp_path / 'batches.jsonl'}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]


def compose_config(items: list[str]) -> Any:
    return reasonft.config.compose_config(items)


def make_records() -> list[dict[str, Any]]:
    """8 CE, 4 UL and 4 weighted records; every record carries the column the term reads."""
    kinds = ["ce"] * 8 + ["ul"] * 4 + ["ce_weighted"] * 4
    weights = [1.0] * 12 + WEIGHTS
    return [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Compute {i} + 3.",
            "response": f"<think>\n{i} + 3 = {i + 3}\n</think>\n" * (1 + i % 2) + f"\\boxed{{{i + 3}}}",
            "loss_type": kind,
            "weight": weight,
        }
        for i, (kind, weight) in enumerate(zip(kinds, weights, strict=True))
    ]


def mean_nll(model: Any, tokenizer: Any, record: dict[str, Any], prompt_format: PromptFormat) -> float:
    """The record's mean `-log p` over its response tokens, from the model's full logits."""
    ex = encode_record(record["prompt"], record["response"], tokenizer, prompt_format)
    ids = torch.tensor([ex["input_ids"]])
    labels = torch.tensor(ex["labels"])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    token_logp = logp.gather(-1, ids[0, 1:, None])[:, 0][labels[1:] != -100]
    return float(-token_logp.mean())


def test_a_third_pool_with_its_own_weighted_term(tmp_path, tiny_model, tiny_tokenizer):
    cfg = compose_config(overrides(tmp_path))
    loss = instantiate(cfg.loss)
    assert isinstance(loss.terms["w"], WeightedCrossEntropyTerm)
    assert loss.loss_types == ("ce", "ul", "ce_weighted") and loss.columns == ("weight",)
    check_train_config(cfg, loss, record_kinds=("ce", "ul", "ce_weighted"))

    records = make_records()
    base = copy.deepcopy(tiny_model).train()
    train_student(cfg, records, copy.deepcopy(tiny_model), tiny_tokenizer, tmp_path / "out")

    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    sampler = report["data"]["sampler"]
    assert sampler["per_step"] == {"ce": 2, "ce_weighted": 1, "ul": 1}
    assert report["data"]["by_loss_type"] == {"ce": 8, "ce_weighted": 4, "ul": 4}
    rows = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    batches = [row for row in rows if "kinds" in row]
    steps: dict[int, list[str]] = {}
    for row in batches:
        steps.setdefault(row["step"], []).extend(row["kinds"])
    assert sorted(steps) == [0, 1, 2]
    for kinds in steps.values():
        assert {kind: kinds.count(kind) for kind in set(kinds)} == PER_STEP

    # The first step, before any update: its weighted record's term by hand.
    first = [pid for row in batches if row["step"] == 0 for pid in row["prompt_id"]]
    by_id = {r["prompt_id"]: r for r in records}
    (weighted,) = [by_id[p] for p in first if by_id[p]["loss_type"] == "ce_weighted"]
    prompt_format = PromptFormat.from_config(cfg.data)
    want = weighted["weight"] * mean_nll(base, tiny_tokenizer, weighted, prompt_format)
    (metrics,) = [row["metrics"] for row in rows if row.get("after_step") == 1][-1:]
    assert metrics["loss_w"] == pytest.approx(want, rel=1e-4)
    assert metrics["loss"] == pytest.approx(
        metrics["loss_ce"] + 1e-4 * metrics["loss_ul"] + metrics["loss_w"], rel=1e-6
    )
    assert metrics["loss_w"] != pytest.approx(mean_nll(base, tiny_tokenizer, weighted, prompt_format))


def test_start_up_names_the_key_of_a_kind_without_a_term_or_a_share(tmp_path):
    no_share = compose_config(overrides(tmp_path, per_step="{ce:2,ul:2}"))
    with pytest.raises(ValueError, match=r"loss.terms.w trains on `ce_weighted` records.*"
                       r"set train.per_step.ce_weighted"):
        check_train_config(no_share, instantiate(no_share.loss))

    cfg = compose_config(overrides(tmp_path))
    loss = instantiate(cfg.loss)
    with pytest.raises(ValueError, match=r"train.per_step: the selection yields `ce_doubled`"):
        check_train_config(cfg, loss, record_kinds=("ce", "ce_doubled"))
    bad_end = compose_config([*overrides(tmp_path), "train.epoch_end=ce_doubled"])
    with pytest.raises(ValueError, match=r"train.epoch_end='ce_doubled'.*\['ce', 'ce_weighted', 'ul'\]"):
        check_train_config(bad_end, loss)
    negative = compose_config(overrides(tmp_path, per_step="{ce:-2,ul:1,ce_weighted:1}"))
    with pytest.raises(ValueError, match=r"train.per_step.ce=-2 must be a non-negative integer"):
        check_train_config(negative, loss)


def test_the_selections_kinds_are_checked_against_the_loss_and_the_shares(tmp_path):
    """The default selection (OXA) yields `ce` and `ul` records; with loss=sft and no `ul` share
    its UL records have neither a term nor a share, and start-up says which key to set."""
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    selector = instantiate(cfg.select)
    assert selector.loss_types == ("ce", "ul")
    check_train_config(cfg, instantiate(cfg.loss), record_kinds=selector.loss_types)
    sft = compose_config([f"paths.output_dir={tmp_path}", "loss=sft", "~train.per_step.ul"])
    with pytest.raises(ValueError, match=r"the selection yields `ul` records.*train.per_step.ul=0"):
        check_train_config(sft, instantiate(sft.loss), record_kinds=selector.loss_types)
