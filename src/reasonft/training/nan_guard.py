"""A callback that stops training on a NaN/inf loss after writing a checkpoint to inspect.

Two ways in, one outcome:

- the loss reaches backward non-finite (any LightningModule): the guard saves a checkpoint and
  raises `NonFiniteLossError` naming the global step and the micro-batch's `prompt_id`s;
- `StudentModule` detects it first in `training_step` and raises `NonFiniteLossError` itself:
  the guard saves the checkpoint in `on_exception` and adds its path to the error as a note.

The checkpoint holds the weights *before* the failing update (backward never ran on the bad loss)
and the loop position of the failing micro-batch; it is named `nonfinite-step=<step>.ckpt`, so
`train.ckpt_path=last` does not pick it up. Every rank takes part in the decision, so under DDP
all ranks stop together.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from reasonft.training.module import NonFiniteLossError

log = logging.getLogger(__name__)


class NaNGuard(Callback):
    """Checkpoint, then stop, when the training loss is NaN or infinite.

    `dirpath`: where the checkpoint goes; default the ModelCheckpoint's folder (else
    `<default_root_dir>/checkpoints`).
    """

    def __init__(
        self, dirpath: str | None = None, filename: str = "nonfinite-step={step}.ckpt"
    ) -> None:
        if "{step}" not in filename:
            raise ValueError(f"callbacks.nan_guard.filename={filename!r} must contain {{step}}")
        self.dirpath = dirpath
        self.filename = filename
        self.saved_path: Path | None = None
        self._prompt_ids: list[Any] | None = None
        self._batch_idx: int | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._prompt_ids = batch.get("prompt_id") if isinstance(batch, dict) else None
        self._batch_idx = batch_idx

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        path = self.save(trainer)
        where = (
            "on another rank"
            if finite
            else f"on rank {trainer.global_rank}: loss={float(loss.detach())}, records "
            f"prompt_id={self._prompt_ids}"
        )
        raise NonFiniteLossError(
            f"non-finite training loss at global step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, micro-batch {self._batch_idx}) {where}. Checkpoint with the "
            f"weights before this step: {path}"
        )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, NonFiniteLossError):
            return
        if self.saved_path is None:
            path = self.save(trainer)
            exception.add_note(f"Checkpoint with the weights before this step: {path}")
        log.error("training stopped: %s (checkpoint %s)", exception, self.saved_path)

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        dirpath = self.dirpath
        if dirpath is None and trainer.checkpoint_callback is not None:
            dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath is None:
            dirpath = Path(trainer.default_root_dir) / "checkpoints"
        return Path(dirpath) / self.filename.format(step=trainer.global_step)

    def save(self, trainer: pl.Trainer) -> Path:
        """Write the checkpoint (every rank must call: sharded strategies gather on save)."""
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        return path
