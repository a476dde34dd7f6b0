"""The LightningModule that fine-tunes the student with a LossComposition (METHODS §1b-§1d).

Per-token log-probs and entropies come from one chunked pass (`token_logprobs`): the
`[batch, length, vocab]` logits never exist whole.

Each term receives the micro-batch's `LossInputs` (log-probs, entropies, scored-token mask, record
kinds and the record columns it reads) and is normalised by its count over the whole optimiser
step, which the micro-batch carries (`batch["step_totals"]`, plain data from the sampler); the sum of the micro-batches' losses over the step and
all ranks is then the step's objective, and `training_step` returns its micro-batch's part times
`accumulate_grad_batches * world_size`, undoing Lightning's division by the accumulation and
DDP's gradient averaging over ranks, so the step's gradient is exactly the objective's. A batch
without step totals (a hand-made DataLoader) is normalised by its own counts and returned as is
(Lightning then averages micro-batches and ranks).

Metrics are pooled over every micro-batch of an optimiser step and over all ranks, then logged
once per step:

- `loss`: the step's objective, `sum_term weight * loss_<term>`;
- `loss_<term>`: each term, unweighted, reduced over the whole global batch;
- `entropy_<loss_type>`: mean token entropy of pi_theta on the scored tokens of that type;
- `tokens_<loss_type>`, `sequences_<loss_type>`: scored tokens and sequences of that type;
- `tokens_per_s`: non-padding input tokens (all ranks) per second of the step's wall time;
- `grad_norm`: L2 norm of all gradients before clipping (this rank's view: under DDP the full
  gradient; under sharded strategies only the local shard).
The learning rate is logged by the LearningRateMonitor callback.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from reasonft.data.prompts import IGNORE_INDEX
from reasonft.scoring.logprobs import token_logprobs
from reasonft.training.losses import LossComposition, LossInputs, LossOutput
from reasonft.training.schedules import warmup_cosine
from reasonft.training.step_totals import StepTotals

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
# The defaults of conf/train/default.yaml's optimizer and scheduler nodes, for callers without one.
DEFAULT_OPTIMIZER: OptimizerFactory = functools.partial(
    torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1
)
DEFAULT_SCHEDULER: SchedulerFactory = functools.partial(warmup_cosine, warmup_ratio=0.03)


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
        optimizer: OptimizerFactory = DEFAULT_OPTIMIZER,
        scheduler: SchedulerFactory | None = DEFAULT_SCHEDULER,
        chunk_tokens: int = 4096,
        gradient_checkpointing: bool = False,
    ) -> None:
        """`optimizer(param_groups)` builds the optimiser (the groups: weights with the
        optimiser's own weight decay, biases and norm weights with none); `scheduler(optimizer,
        total_steps=N)` (or `scheduler(optimizer)` when it takes no `total_steps`) the per-step
        learning-rate schedule, null for a constant rate."""
        super().__init__()
        check_optimization(optimizer, scheduler)
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.chunk_tokens = chunk_tokens
        if gradient_checkpointing:
            enable_activation_checkpointing(model)
        self._stats = StepStats()
        self._step_totals: StepTotals | None = None
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
        target_mask[:, 0] = False  # nothing predicts a sequence's first token
        if "packed_input_ids" in batch:
            logp, entropy = self._packed_logprobs(batch, target_mask)
        else:
            logp, entropy = token_logprobs(
                self.model, batch["input_ids"], batch["attention_mask"], target_mask, self.chunk_tokens
            )
        inputs = LossInputs(
            logp=logp,
            entropy=entropy,
            mask=target_mask,
            loss_type=batch["loss_type"],
            loss_types=tuple(batch["loss_types"]),
            columns=batch.get("columns") or {},
        )
        return self.loss(inputs, step_totals_of(batch)), entropy.detach(), target_mask

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
        totals = step_totals_of(batch)
        if totals is None:
            return out.total
        self._step_totals = totals
        return out.total * self.gradient_scale()

    def gradient_scale(self) -> int:
        """What Lightning divides the returned loss by (the accumulation) times what the strategy
        averages gradients over (the ranks). DeepSpeed's engine may divide by its accumulation
        steps once more; that strategy is not covered by the tests."""
        return self.trainer.accumulate_grad_batches * self.trainer.world_size

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
            pooled = self._stats.pooled(self.trainer.strategy)
            if self._step_totals is not None:
                self.check_step_totals(pooled, self._step_totals)
            metrics.update(self.step_metrics(pooled, elapsed))
        self._stats.reset()
        self._step_totals = None
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

    def check_step_totals(self, pooled: dict[str, float], totals: StepTotals) -> None:
        """The units the terms found over the step must be the ones they were divided by."""
        for name, term in self.loss.terms.items():
            expected = totals.units(term.loss_type, term.reduction)
            found = pooled[f"term_count/{name}"]
            if found != expected:
                raise RuntimeError(
                    f"loss.terms.{name}: the step's {term.reduction} count is {found:g} over all "
                    f"micro-batches and ranks, but the sampler's step totals say {expected}; the "
                    "loss was normalised by the wrong count (the records' scored tokens and the "
                    "loss mask disagree)"
                )

    def step_metrics(self, pooled: dict[str, float], elapsed: float) -> dict[str, float]:
        """Logged metrics from the step's sums pooled over micro-batches and ranks."""
        metrics = {"loss": 0.0}
        for name, term in self.loss.terms.items():
            count = pooled[f"term_count/{name}"]
            if count > 0:
                metrics[f"loss_{name}"] = pooled[f"term_sum/{name}"] / count
                metrics["loss"] += term.weight * metrics[f"loss_{name}"]
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
        """`train.optimizer` over two groups (no weight decay on biases and norm weights) and
        `train.scheduler`, stepped once per optimiser step."""
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
        groups = [
            {"params": decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        kwargs = {}
        if takes_total_steps(self.scheduler_factory):
            total_steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(total_steps):
                raise ValueError(
                    "trainer: the number of optimiser steps is unbounded; set trainer.max_epochs "
                    "or trainer.max_steps (train.scheduler needs it)"
                )
            kwargs["total_steps"] = int(total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer, **kwargs),
                "interval": "step",
                "frequency": 1,
                "name": "lr",
            },
        }


def step_totals_of(batch: dict[str, Any]) -> StepTotals | None:
    """The step totals a sampled micro-batch carries as plain data (None for a hand-made batch)."""
    totals = batch.get("step_totals")
    return None if totals is None else StepTotals.from_dict(totals)


def takes_total_steps(factory: SchedulerFactory) -> bool:
    return "total_steps" in inspect.signature(factory).parameters


def check_optimization(optimizer: OptimizerFactory, scheduler: SchedulerFactory | None) -> None:
    """Build the optimiser and schedule once on a stand-in parameter, so that a bad setting
    fails when the module is made, naming its config key, not when training starts."""
    probe = [{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "probe"}]
    try:
        built = optimizer(probe)
    except (TypeError, ValueError) as error:
        raise ValueError(f"train.optimizer: {error}") from error
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(
            f"train.optimizer must build a torch.optim.Optimizer (a `_target_` with "
            f"`_partial_: true`), got {type(built).__name__}"
        )
    if scheduler is None:
        return
    try:
        kwargs = {"total_steps": 100} if takes_total_steps(scheduler) else {}
        scheduler(built, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"train.scheduler: {error}") from error
