"""`train_student`: records + student -> fine-tuned Hugging Face checkpoint, through Lightning.

Config keys read (all others are ignored; the whole resolved config is logged as hyperparameters):

- `loss`: a LossComposition (`conf/loss/*.yaml`), instantiated.
- `train.{lr, betas, weight_decay, warmup_ratio, chunk_tokens, gradient_checkpointing}`: module.
- `data.{prompt_suffix, chat_template, system_prompt}`: the prompt format (`PromptFormat`).
- `train.{max_length, overlength, micro_batch_size, global_batch_size, ul_per_global_batch,
  seed, num_workers, group_by_length, packing}`: data.
- `train.ckpt_path`: passed to `Trainer.fit` (`last`, a path, or null).
- `trainer`: a `pytorch_lightning.Trainer` node, instantiated with `strategy`, `logger` and
  `callbacks` built from the groups below; `accumulate_grad_batches` is derived as
  `train.global_batch_size / (train.micro_batch_size * trainer.world_size)` and must not be set.
- `strategy`: a node with `_target_` (a Strategy class) or with only `name` (a Lightning
  strategy name: auto, ddp, fsdp, deepspeed_stage_2, ...); absent means auto.
- `logger`: mapping name -> logger node (empty: no logger); `callbacks`: mapping name ->
  callback node. A LearningRateMonitor is left out (and reported) when there is no logger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.strategies import Strategy
from transformers import PreTrainedTokenizerFast

from reasonft.data.prompts import PromptFormat
from reasonft.io import atomic_path, write_json
from reasonft.models.tokenizer import save_tokenizer
from reasonft.training.datamodule import RecordsDataModule
from reasonft.training.module import StudentModule
from reasonft.training.sampler import accumulation_steps
from reasonft.training.strategies import full_state_dict


def build_strategy(node: DictConfig | None) -> Strategy | str:
    """A Strategy from `_target_`, or a Lightning strategy name from `name`."""
    if node is None:
        return "auto"
    if "_target_" in node:
        return instantiate(node)
    if set(node.keys()) == {"name"}:
        return str(node.name)
    raise ValueError(
        f"strategy: {OmegaConf.to_container(node)} needs `_target_` (a Strategy class with its "
        "arguments) or only `name` (a Lightning strategy name such as auto, ddp, fsdp)"
    )


def build_trainer(cfg: DictConfig) -> tuple[pl.Trainer, list[str]]:
    """The Trainer from `cfg.trainer`/`strategy`/`logger`/`callbacks`, with derived accumulation.

    Returns the trainer and the names of callbacks left out (LearningRateMonitor without logger).
    """
    if "accumulate_grad_batches" in cfg.trainer:
        raise ValueError(
            "trainer.accumulate_grad_batches is derived from train.global_batch_size / "
            "(train.micro_batch_size * world size); remove it from the trainer config"
        )
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node]
    callbacks, skipped = [], []
    for name, node in (cfg.get("callbacks") or {}).items():
        if not node:
            continue
        callback = instantiate(node)
        if isinstance(callback, LearningRateMonitor) and not loggers:
            skipped.append(name)
            continue
        callbacks.append(callback)
    trainer = instantiate(
        cfg.trainer,
        strategy=build_strategy(cfg.get("strategy")),
        logger=loggers,
        callbacks=callbacks,
    )
    # Set after construction, once the strategy knows the world size (Lightning's
    # GradientAccumulationScheduler sets this attribute the same way).
    trainer.accumulate_grad_batches = accumulation_steps(
        cfg.train.global_batch_size, cfg.train.micro_batch_size, trainer.world_size
    )
    return trainer, skipped


def save_student(model: Any, tokenizer: Any, path: Path, state_dict: dict[str, Any] | None = None) -> None:
    """`save_pretrained` of model (with `state_dict` when given: the gathered full weights of a
    sharded model) and tokenizer into `path`, atomically."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if type(tokenizer) is PreTrainedTokenizerFast:
            save_tokenizer(tokenizer, tmp)
        else:
            tokenizer.save_pretrained(tmp)


def train_student(
    cfg: DictConfig,
    records: datasets.Dataset | list[dict[str, Any]],
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
) -> str:
    """Fine-tune `model` on `records`; write `out_dir/model` and `out_dir/train_report.json`.

    Returns the path of the saved model folder (loadable with `AutoModelForCausalLM`).
    """
    train = cfg.train
    pl.seed_everything(train.seed, workers=True)
    loss = instantiate(cfg.loss)
    trainer, skipped_callbacks = build_trainer(cfg)
    datamodule = RecordsDataModule(
        records,
        tokenizer,
        prompt_format=PromptFormat.from_config(cfg.get("data") or {}),
        max_length=train.max_length,
        overlength=train.overlength,
        micro_batch_size=train.micro_batch_size,
        global_batch_size=train.global_batch_size,
        ul_per_global_batch=train.ul_per_global_batch,
        seed=train.seed,
        num_workers=train.num_workers,
        loss_types=loss.loss_types,
        group_by_length=train.group_by_length,
        packing=train.packing,
    )
    module = StudentModule(
        model,
        loss,
        lr=train.lr,
        betas=tuple(train.betas),
        weight_decay=train.weight_decay,
        warmup_ratio=train.warmup_ratio,
        chunk_tokens=train.chunk_tokens,
        gradient_checkpointing=train.gradient_checkpointing,
    )
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    trainer.fit(module, datamodule=datamodule, ckpt_path=train.ckpt_path)

    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    gathered = full_state_dict(trainer, model)  # collective: every rank takes part
    if trainer.is_global_zero:
        save_student(model, tokenizer, model_dir, state_dict=gathered)
        report = {
            "data": datamodule.report,
            "world_size": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "ckpt_path": train.ckpt_path,
            "callbacks_skipped": skipped_callbacks,
            "loss": repr(loss),
            "model_dir": str(model_dir),
        }
        write_json(report, out_dir / "train_report.json")
    trainer.strategy.barrier("train_student.save")
    return str(model_dir)
