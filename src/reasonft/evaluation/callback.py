"""A small evaluation inside training: every N optimizer steps and/or when training ends.

Enabled from the config with `+callbacks/eval=in_training` (conf/callbacks/eval/): the `eval`
config's Evaluator, capped in samples and problems, run on the LightningModule's model with the
tokenizer and prompt format of the training data (the trainer's datamodule, as train_student
builds it), and the data source of the run for benchmarks that read one of its splits. The
random state of training is restored afterwards, so the trained weights do not depend on
whether it ran.

Distributed training: only global rank 0 samples and verifies; the other ranks wait at a barrier
until it is done, so all ranks resume training together. This needs the full model on rank 0,
i.e. DDP or DeepSpeed ZeRO-1/2 (parameters replicated); with FSDP or ZeRO-3 (parameters
sharded, every forward a collective) the callback refuses to start. Keep the in-training
evaluation short: the waiting ranks sit in a collective, which the process-group timeout
(30 minutes by default) ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from reasonft.data.prompts import PromptFormat
from reasonft.evaluation.evaluate import Evaluator

log = logging.getLogger(__name__)


def _shards_parameters(strategy: Any) -> bool:
    name = type(strategy).__name__
    if "FSDP" in name:
        return True
    if "DeepSpeed" in name:
        config = getattr(strategy, "config", None) or {}
        return int(config.get("zero_optimization", {}).get("stage", 0)) >= 3
    return False


class EvaluationCallback(pl.Callback):
    """Run `evaluator` (made small with `n_samples`/`limit`) during training and log its metrics.

    Args:
        evaluator: the Evaluator to run (e.g. the `eval` config).
        every_n_steps: evaluate after every N optimizer steps (0: never during training).
        at_train_end: evaluate once more when training ends (unless that step was just done).
        n_samples, limit: caps on samples per problem and problems per benchmark (null: as configured).
        out_dir: results go to `out_dir/step_<global step>/` (null: the trainer's log_dir or
            default_root_dir, under `evaluation/`).
        tokenizer: the tokenizer; null: the trainer's datamodule's (`datamodule.tokenizer`).
        model_attr: the attribute of the LightningModule that holds the HF causal LM.
        data_source: for benchmarks that read a data-source split (e.g. the toy world);
            required when one does.
        prompt_format: the prompt format; null: the trainer's datamodule's, as in training
            (else the default `PromptFormat()`).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        every_n_steps: int = 0,
        at_train_end: bool = True,
        n_samples: int | None = None,
        limit: int | None = None,
        out_dir: str | None = None,
        tokenizer: Any = None,
        model_attr: str = "model",
        data_source: Any = None,
        prompt_format: PromptFormat | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"EvaluationCallback.every_n_steps={every_n_steps}: must be >= 0")
        readers = [f"eval.benchmarks.{b.name}" for b in evaluator.benchmarks if b.split is not None]
        if evaluator.heldout is not None and evaluator.heldout.get("split") is not None:
            readers.append("eval.heldout_entropy")
        if readers and data_source is None:
            raise ValueError(
                f"EvaluationCallback: {readers} read a split of the data source; set "
                "callbacks.eval.data_source (e.g. ${data.source}) or give them a file `path`"
            )
        self.evaluator = evaluator.with_budget(n_samples=n_samples, limit=limit)
        self.every_n_steps = int(every_n_steps)
        self.at_train_end = bool(at_train_end)
        self.out_dir = out_dir
        self.tokenizer = tokenizer
        self.model_attr = model_attr
        self.data_source = data_source
        self.prompt_format = prompt_format
        self.evaluated_steps: list[int] = []
        self.last_results: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if _shards_parameters(trainer.strategy):
            raise ValueError(
                f"EvaluationCallback: strategy {type(trainer.strategy).__name__} shards the "
                "parameters, so rank 0 cannot sample alone. Use DDP/ZeRO-2, or evaluate the saved "
                "checkpoint after training (stage `evaluate`)."
            )
        if not hasattr(pl_module, self.model_attr):
            raise ValueError(
                f"EvaluationCallback: the LightningModule has no attribute {self.model_attr!r}; "
                "set callbacks.eval.model_attr to the one that holds the causal LM"
            )
        datamodule = getattr(trainer, "datamodule", None)
        if self.tokenizer is None:
            self.tokenizer = getattr(datamodule, "tokenizer", None)
            if self.tokenizer is None:
                raise ValueError(
                    "EvaluationCallback: no tokenizer: the trainer's datamodule has none; pass "
                    "tokenizer (train_student's RecordsDataModule carries it)"
                )
        if self.prompt_format is None:
            self.prompt_format = getattr(datamodule, "prompt_format", None)
        self.prompt_format = PromptFormat.coerce(self.prompt_format)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end at the same optimizer step: run once.
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step not in self.evaluated_steps:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_train_end and trainer.global_step not in self.evaluated_steps:
            self._run(trainer, pl_module)

    def _folder(self, trainer: pl.Trainer) -> Path:
        base = self.out_dir or trainer.log_dir or trainer.default_root_dir
        return Path(base) / ("" if self.out_dir else "evaluation") / f"step_{trainer.global_step:07d}"

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self.evaluated_steps.append(step)
        # Every submodule's own flag: a frozen part kept in eval mode stays so.
        modes = {module: module.training for module in pl_module.modules()}
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            if trainer.is_global_zero:
                with torch.random.fork_rng(devices=devices):
                    self._evaluate(trainer, pl_module, step)
        finally:
            for module, training in modes.items():
                module.training = training
        trainer.strategy.barrier("reasonft-evaluation")

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        self.last_results = self.evaluator.evaluate(
            getattr(pl_module, self.model_attr),
            self.tokenizer,
            self._folder(trainer),
            data_source=self.data_source,
            prompt_format=self.prompt_format,
            loggers=trainer.loggers,
            tag="train",
            step=step,
        )
        log.info("step %d: eval average %s", step, self.last_results["average"])
