"""The LightningModule that fine-tunes the student with a LossComposition (METHODS §1b-§1d).

Per-token log-probs and entropies come from one chunked pass (`token_logprobs`): the
`[batch, length, vocab]` logits never exist whole. Metrics are pooled over every micro-batch of
an optimiser step and over all ranks, then logged once per step:

- `loss`: the objective as optimised (mean over micro-batches of the weighted sum of terms);
- `loss_<term>`: each term, unweighted, reduced over the whole global batch;
- `entropy_<loss_type>`: mean token entropy of pi_theta on the scored tokens of that type;
- `tokens_<loss_type>`, `sequences_<loss_type>`: scored tokens and sequences of that type;
- `tokens_per_s`: non-padding input tokens (all ranks) per second of the step's wall time;
- `grad_norm`: L2 norm of all gradients before clipping (this rank's view: under DDP the full
  gradient; under sharded strategies only the local shard).
The learning rate is logged by the LearningRateMonitor callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from transformers import get_cosine_schedule_with_warmup

from reasonft.data.prompts import IGNORE_INDEX
from reasonft.scoring.logprobs import token_logprobs
from reasonft.training.losses import LossComposition, LossOutput


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StepStats:
    """Sums over the micro-batches of one optimiser step, reduced over ranks in one collective."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.started: float | None = None

    def add(self, key: str, value: Tensor) -> None:
        value = value.detach().double()
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def pooled(self, strategy: pl.strategies.Strategy) -> dict[str, float]:
        keys = sorted(self.sums)
        totals = strategy.reduce(torch.stack([self.sums[k] for k in keys]), reduce_op="sum")
        return dict(zip(keys, totals.tolist(), strict=True))

    def reset(self) -> None:
        self.sums.clear()
        self.started = None


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in backward (transformers' name changed within 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class StudentModule(pl.LightningModule):
    """Wraps a Hugging Face causal LM; trains it on collated batches with `loss`."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss: LossComposition,
        lr: float = 1e-5,
        betas: Sequence[float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        warmup_ratio: float = 0.03,
        chunk_tokens: int = 4096,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"train.lr={lr} must be positive")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio={warmup_ratio} must be in [0, 1)")
        if len(betas) != 2:
            raise ValueError(f"train.betas={list(betas)} must be two numbers, e.g. [0.9, 0.95]")
        self.model = model
        self.loss = loss
        self.lr = lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.chunk_tokens = chunk_tokens
        if gradient_checkpointing:
            enable_activation_checkpointing(model)
        self._stats = StepStats()
        self._saved_use_cache: bool | None = None
        self._saved_training_mode = model.training

    # ---- training -------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        # Lightning keeps the modules' mode, and from_pretrained returns eval mode.
        self._saved_training_mode = self.model.training
        self.model.train()
        # A KV cache is useless in teacher-forced training; restored for saving/generation.
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            self._saved_use_cache = config.use_cache
            config.use_cache = False

    def on_fit_end(self) -> None:
        self.model.train(self._saved_training_mode)
        if self._saved_use_cache is not None:
            self.model.config.use_cache = self._saved_use_cache

    def compute_loss(self, batch: dict[str, Any]) -> tuple[LossOutput, Tensor, Tensor]:
        """(loss output, per-token entropy [B, L], scored-token mask [B, L]) of one micro-batch."""
        target_mask = batch["labels"] != IGNORE_INDEX
        if "packed_input_ids" in batch:
            logp, entropy = self._packed_logprobs(batch, target_mask)
        else:
            logp, entropy = token_logprobs(
                self.model, batch["input_ids"], batch["attention_mask"], target_mask, self.chunk_tokens
            )
        out = self.loss(logp, target_mask, batch["loss_type"], batch["loss_types"])
        return out, entropy.detach(), target_mask

    def _packed_logprobs(self, batch: dict[str, Any], target_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probs and entropies from one padding-free forward pass over the packed row (no
        attention mask: the restarting position ids separate the sequences), put back in the
        padded [B, L] layout the losses read."""
        index = batch["packed_index"]
        packed_target = torch.zeros_like(batch["packed_input_ids"], dtype=torch.bool)
        packed_target[0, index[target_mask]] = True
        packed_target &= batch["packed_position_ids"] > 0  # a sequence's first token has no context
        logp, entropy = token_logprobs(
            self.model, batch["packed_input_ids"], None, packed_target, self.chunk_tokens,
            position_ids=batch["packed_position_ids"],
        )
        return logp[0][index] * target_mask, entropy[0][index] * target_mask

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._stats.started is None:
            self._stats.started = time.perf_counter()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out, entropy, target_mask = self.compute_loss(batch)
        finite = bool(torch.isfinite(out.total))
        if self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self.on_nonfinite_loss(batch, batch_idx, out, finite)
        self.record_micro_batch(batch, out, entropy, target_mask)
        return out.total

    def on_nonfinite_loss(
        self, batch: dict[str, Any], batch_idx: int, out: LossOutput, finite_here: bool
    ) -> None:
        """Called on every rank when any rank's loss is NaN/inf, before backward (the weights
        are still the last finite ones). Raises NonFiniteLossError; override to save state first."""
        terms = {name: float(t.value.detach()) for name, t in out.terms.items()}
        where = (
            "on another rank"
            if finite_here
            else f"on rank {self.global_rank}: loss={float(out.total.detach())}, terms={terms}, "
            f"records prompt_id={batch['prompt_id']}"
        )
        raise NonFiniteLossError(
            f"non-finite training loss at global step {self.global_step} "
            f"(epoch {self.current_epoch}, micro-batch {batch_idx}) {where}. Check those records, "
            "lower train.lr, or keep trainer.gradient_clip_val set."
        )

    def record_micro_batch(
        self, batch: dict[str, Any], out: LossOutput, entropy: Tensor, target_mask: Tensor
    ) -> None:
        """Add one micro-batch's sums to the current optimiser step's statistics."""
        stats = self._stats
        stats.add("micro_batches", torch.ones((), device=entropy.device))
        stats.add("loss", out.total)
        stats.add("input_tokens", batch["attention_mask"].sum())
        for name, term in out.terms.items():
            stats.add(f"term_sum/{name}", term.total)
            stats.add(f"term_count/{name}", term.count)
        for index, loss_type in enumerate(batch["loss_types"]):
            selected = batch["loss_type"] == index
            tokens = target_mask & selected[:, None]
            stats.add(f"entropy_sum/{loss_type}", (entropy * tokens).sum())
            stats.add(f"tokens/{loss_type}", tokens.sum())
            stats.add(f"sequences/{loss_type}", selected.sum())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        metrics: dict[str, float] = {}
        if grads:
            metrics["grad_norm"] = float(torch.nn.utils.get_total_norm(grads))
        if self._stats.sums:
            started = self._stats.started or time.perf_counter()
            elapsed = time.perf_counter() - started
            metrics.update(self.step_metrics(self._stats.pooled(self.trainer.strategy), elapsed))
        self._stats.reset()
        if "loss" in metrics:
            self.log(
                "loss",
                metrics.pop("loss"),
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=1,
            )
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def step_metrics(self, pooled: dict[str, float], elapsed: float) -> dict[str, float]:
        """Logged metrics from the step's sums pooled over micro-batches and ranks."""
        metrics = {"loss": pooled["loss"] / pooled["micro_batches"]}
        for name in self.loss.terms:
            count = pooled[f"term_count/{name}"]
            if count > 0:
                metrics[f"loss_{name}"] = pooled[f"term_sum/{name}"] / count
        for key, value in pooled.items():
            kind, _, loss_type = key.partition("/")
            if kind == "entropy_sum" and pooled[f"tokens/{loss_type}"] > 0:
                metrics[f"entropy_{loss_type}"] = value / pooled[f"tokens/{loss_type}"]
            elif kind in ("tokens", "sequences"):
                metrics[f"{kind}_{loss_type}"] = value
        if elapsed > 0:
            metrics["tokens_per_s"] = pooled["input_tokens"] / elapsed
        return metrics

    # ---- optimisation ---------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no weight decay on biases and norm weights) + cosine schedule with warmup."""
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=self.lr, betas=self.betas
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError(
                "trainer: the number of optimiser steps is unbounded; set trainer.max_epochs or "
                "trainer.max_steps (the cosine schedule needs it)"
            )
        total_steps = int(total_steps)
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, math.ceil(self.warmup_ratio * total_steps), total_steps
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": "step",
                "frequency": 1,
                "name": "lr",
            },
        }
