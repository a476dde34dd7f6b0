"""`train_student`: records + student -> fine-tuned Hugging Face checkpoint, through Lightning.

Config keys read (all others are ignored; the whole resolved config is logged as hyperparameters):

- `loss`: a LossComposition (`conf/loss/*.yaml`), instantiated.
- `train.optimizer`: a partial (`_target_` + `_partial_: true`) called with the parameter groups;
  `train.scheduler`: a partial called with `(optimizer, total_steps=...)`, or null (constant lr).
- `train.{chunk_tokens, gradient_checkpointing}`: module.
- `data.{prompt_suffix, chat_template, system_prompt, response_end}`: the prompt format.
- `train.{max_length, overlength, micro_batch_size, per_step, epoch_end, seed, num_workers,
  group_by_length, packing}`: data. `train.per_step` maps each record kind (a loss term's
  `loss_type`) to its sequences per optimiser step.
- `train.ckpt_path`: passed to `Trainer.fit` (`last`, a path, or null).
- `trainer`: a `pytorch_lightning.Trainer` node, instantiated with `strategy`, `logger` and
  `callbacks` built from the groups below; `accumulate_grad_batches` is derived as
  `sum(train.per_step) / (train.micro_batch_size * trainer.world_size)` (the pools some term
  trains on) and must not be set.
- `strategy`: a node with `_target_` (a Strategy class) or with only `name` (a Lightning
  strategy name: auto, ddp, fsdp, deepspeed_stage_2, ...); absent means auto.
- `logger`: mapping name -> logger node (empty: no logger); `callbacks`: mapping name ->
  callback node. A LearningRateMonitor is left out (and reported) when there is no logger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.strategies import Strategy

from reasonft.data.prompts import PromptFormat
from reasonft.io import atomic_path, write_json
from reasonft.models.tokenizer import check_tokenizer_reload
from reasonft.training.datamodule import RecordsDataModule
from reasonft.training.losses import LossComposition
from reasonft.training.module import StudentModule
from reasonft.training.precision import is_pure_low_precision, precision_note
from reasonft.training.sampler import (
    EPOCH_END_RULES,
    PER_STEP_KEY,
    accumulation_steps,
    check_per_step,
)
from reasonft.training.strategies import full_state_dict

log = logging.getLogger(__name__)


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


def step_shares(loss: LossComposition, per_step: Mapping[str, int]) -> dict[str, int]:
    """`train.per_step` as the sampler takes it: every term's `loss_type` must have an entry; a
    kind with a share but no term (UL records under an SFT loss) gets 0, its records are left
    out of training, and that is said once, at start-up."""
    shares = check_per_step(per_step)
    for name, term in loss.terms.items():
        if term.loss_type not in shares:
            raise ValueError(
                f"loss.terms.{name} trains on `{term.loss_type}` records, but {PER_STEP_KEY} "
                f"({shares}) gives them no share of the step; set "
                f"{PER_STEP_KEY}.{term.loss_type}"
            )
    for kind, share in shares.items():
        if share > 0 and kind not in loss.loss_types:
            shares[kind] = 0
            kept = {k: v for k, v in shares.items() if v}
            log.warning(
                "%s.%s=%s is ignored: the loss (%r) has no term on `%s` records, which are left "
                "out; each step holds %s",
                PER_STEP_KEY, kind, share, loss, kind, kept,
            )
    return shares


def check_record_kinds(
    loss: LossComposition, per_step: Mapping[str, int], record_kinds: Iterable[str]
) -> None:
    """Records of a kind (e.g. a selection's `loss_type`s) with neither a term nor a share of
    the step would stop the fit: say so at start-up."""
    for kind in record_kinds:
        if kind not in loss.loss_types and kind not in per_step:
            raise ValueError(
                f"{PER_STEP_KEY}: the selection yields `{kind}` records, but no loss term "
                f"(loss.terms: {loss.loss_types}) trains on them and {PER_STEP_KEY} "
                f"({dict(per_step)}) has no entry for them; add a term with loss_type: {kind} "
                f"and {PER_STEP_KEY}.{kind}, or {PER_STEP_KEY}.{kind}=0 to leave them out"
            )


def build_trainer(
    cfg: DictConfig, per_step: Mapping[str, int] | None = None
) -> tuple[pl.Trainer, list[str]]:
    """The Trainer from `cfg.trainer`/`strategy`/`logger`/`callbacks`, with derived accumulation
    (from `per_step`, the shares the loss trains on; `cfg.train.per_step` when not given).

    Returns the trainer and the names of callbacks left out (LearningRateMonitor without logger).
    """
    if "accumulate_grad_batches" in cfg.trainer:
        raise ValueError(
            f"trainer.accumulate_grad_batches is derived from sum({PER_STEP_KEY}) / "
            "(train.micro_batch_size * world size); remove it from the trainer config"
        )
    per_step = check_per_step(cfg.train.per_step if per_step is None else per_step)
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
        sum(per_step.values()), cfg.train.micro_batch_size, trainer.world_size
    )
    return trainer, skipped


def build_partial(node: DictConfig | None, key: str, optional: bool = False) -> Any:
    """A `_partial_: true` node instantiated into a callable (plain containers, so that the
    optimiser's saved state holds no OmegaConf objects)."""
    if node is None and optional:
        return None
    if node is None or "_target_" not in node or not node.get("_partial_", False):
        raise ValueError(
            f"{key} must be a node with `_target_` and `_partial_: true` (see "
            f"conf/train/default.yaml){', or null' if optional else ''}"
        )
    return instantiate(node, _convert_="all")


class NoTrainingStep(RuntimeError):
    """A fit that took no optimiser step: there is no trained model to report."""


# Trainer keys that, at 0, let a fit end without one optimiser step.
ZERO_STEP_KEYS = ("max_epochs", "max_steps", "limit_train_batches")


def check_takes_steps(trainer: DictConfig) -> None:
    """A Trainer setting that trains nothing stops at start-up, naming its key."""
    for key in ZERO_STEP_KEYS:
        value = trainer.get(key)
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ValueError(
                f"trainer.{key}={value}: the fit would take no optimiser step and report the "
                "base student as trained; give it a positive value (max_steps=-1: no step limit)"
            )


def check_train_config(
    cfg: DictConfig, loss: LossComposition, record_kinds: Iterable[str] = ()
) -> None:
    """At start-up: every term's kind has a share of the step and every kind the selection
    yields (`record_kinds`) a term or a share, the optimiser and schedule build (on a probe
    parameter), and the Trainer builds with its strategy and the derived accumulation, so that
    a wrongly typed value or an impossible size stops before any stage runs."""
    from reasonft.training.module import check_optimization

    check_takes_steps(cfg.trainer)
    shares = step_shares(loss, cfg.train.per_step)
    check_record_kinds(loss, shares, record_kinds)
    epoch_end = cfg.train.epoch_end
    if epoch_end not in EPOCH_END_RULES and epoch_end not in shares:
        raise ValueError(
            f"train.epoch_end={epoch_end!r}; choose one of {EPOCH_END_RULES} or a pool of "
            f"{PER_STEP_KEY} ({list(shares)})"
        )
    precision = cfg.trainer.get("precision")
    note = precision_note(precision, (cfg.get("model") or {}).get("dtype"))
    if note:
        log.log(logging.WARNING if is_pure_low_precision(precision) else logging.INFO, note)
    check_optimization(
        build_partial(cfg.train.optimizer, "train.optimizer"),
        build_partial(cfg.train.scheduler, "train.scheduler", optional=True),
    )
    quiet = cfg.copy()
    with open_dict(quiet):  # no files, no runs: the loggers and callbacks are checked elsewhere
        quiet.logger, quiet.callbacks = {}, {}
    try:
        build_trainer(quiet, shares)
    except (TypeError, ValueError) as err:
        raise type(err)(f"trainer/train: {err}") from err
    except Exception as err:
        raise ValueError(f"trainer: {err}") from err


def save_student(
    model: Any,
    tokenizer: Any,
    path: Path,
    state_dict: dict[str, Any] | None = None,
    texts: list[str] | tuple[str, ...] = (),
) -> None:
    """`save_pretrained` of model (with `state_dict` when given: the gathered full weights of a
    sharded model) and tokenizer into `path`, atomically. The saved tokenizer is reloaded as
    every later stage loads it and must encode `texts` (the training texts) to the same ids."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        check_tokenizer_reload(tokenizer, tmp, texts)


def train_student(
    cfg: DictConfig,
    records: datasets.Dataset | list[dict[str, Any]],
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
) -> str:
    """Fine-tune `model` on `records`; write `out_dir/model` and `out_dir/train_report.json`
    (its `model_dir` is relative to `out_dir`, so it stays true when `out_dir` is renamed).

    Returns the path of the saved model folder (loadable with `AutoModelForCausalLM`).
    """
    train = cfg.train
    pl.seed_everything(train.seed, workers=True)
    loss = instantiate(cfg.loss)
    per_step = step_shares(loss, train.per_step)
    trainer, skipped_callbacks = build_trainer(cfg, per_step)
    datamodule = RecordsDataModule(
        records,
        tokenizer,
        prompt_format=PromptFormat.from_config(cfg.get("data") or {}),
        max_length=train.max_length,
        overlength=train.overlength,
        micro_batch_size=train.micro_batch_size,
        per_step=per_step,
        epoch_end=str(train.epoch_end),
        seed=train.seed,
        num_workers=train.num_workers,
        loss_types=loss.loss_types,
        columns=loss.columns,
        group_by_length=train.group_by_length,
        packing=train.packing,
    )
    module = StudentModule(
        model,
        loss,
        optimizer=build_partial(train.optimizer, "train.optimizer"),
        scheduler=build_partial(train.scheduler, "train.scheduler", optional=True),
        chunk_tokens=train.chunk_tokens,
        gradient_checkpointing=train.gradient_checkpointing,
    )
    hparams = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    trainer.fit(module, datamodule=datamodule, ckpt_path=train.ckpt_path)
    if trainer.global_step == 0:
        raise NoTrainingStep(
            f"train: the fit ended after {trainer.current_epoch} epoch(s) without one optimiser "
            f"step (trainer.max_epochs={cfg.trainer.get('max_epochs')}, trainer.max_steps="
            f"{cfg.trainer.get('max_steps')}, trainer.limit_train_batches="
            f"{cfg.trainer.get('limit_train_batches')}, {len(datamodule.sampler or [])} "
            "micro-batches per epoch); no trained model is written"
        )

    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    gathered = full_state_dict(trainer, model)  # collective: every rank takes part
    if trainer.is_global_zero:
        save_student(model, tokenizer, model_dir, state_dict=gathered, texts=datamodule.sample_texts())
        report = {
            "data": datamodule.report,
            "world_size": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "ckpt_path": train.ckpt_path,
            "callbacks_skipped": skipped_callbacks,
            "loss": repr(loss),
            "model_dir": str(model_dir.relative_to(out_dir)),
        }
        write_json(report, out_dir / "train_report.json")
    trainer.strategy.barrier("train_student.save")
    return str(model_dir)
