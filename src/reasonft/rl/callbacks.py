"""What the rl stage hooks into TRL's training loop (transformers `TrainerCallback`s).

- `MetricsHistory`: every logged step's metrics — TRL's (mean reward, rollout entropy, response
  length, KL, clip fraction, ...) and the validation's — go to the run's Lightning loggers (CSV,
  W&B, TensorBoard: `logger=`), and to `history.jsonl` beside the checkpoints, which a resumed run
  cuts back to its checkpoint's step and continues (the curves are drawn from it).
- `PeriodicValidation`: validation Pass@1 / Pass@k on held-out problems (a reasonft Evaluator)
  before the first step, every N optimiser steps and after the last; global rank 0 samples, the
  other ranks wait at a barrier.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

# TRL's metric names -> the names the stage logs and draws.
TRL_METRICS = {
    "reward": "reward",
    "entropy": "entropy",
    "completions/mean_length": "response_length",
    "kl": "kl",
    "clip_ratio/region_mean": "clip_fraction",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "completions/clipped_ratio": "truncated_share",
}


class MetricsHistory(TrainerCallback):
    """Per-step metrics to `loggers` and to `path` (JSON lines: {"step": n, name: value, ...})."""

    def __init__(self, path: Path, loggers: Sequence[Any] = (), is_main: bool = True) -> None:
        self.path = Path(path)
        self.loggers = list(loggers)
        self.is_main = is_main

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A resumed run starts from its checkpoint's step: what was logged after it is done again.
        if self.is_main:
            kept = [r for r in self.rows() if r["step"] <= state.global_step]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def record(self, step: int, metrics: dict[str, float]) -> None:
        if not self.is_main or not metrics:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **metrics}) + "\n")
        for logger in self.loggers:
            logger.log_metrics({f"rl/{k}": v for k, v in metrics.items()}, step=int(step))
            if hasattr(logger, "save"):
                logger.save()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        metrics = {}
        for key, value in logs.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value is None:
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            name = TRL_METRICS.get(key, key if key.startswith("reward_status/") else None)
            if name is not None:
                metrics[name] = float(value)
        self.record(state.global_step, metrics)


class PeriodicValidation(TrainerCallback):
    """Validation with `evaluator` on the policy being trained: before the first step, every
    `every_n_steps` optimiser steps and after the last; metrics to `history`."""

    def __init__(
        self,
        evaluator: Any,
        every_n_steps: int,
        history: MetricsHistory,
        out_dir: Path,
        tokenizer: Any,
        prompt_format: Any,
        data_source: Any,
        is_main: bool,
        barrier: Any,
    ) -> None:
        self.evaluator = evaluator
        self.every_n_steps = int(every_n_steps)
        self.history = history
        self.out_dir = Path(out_dir)
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.data_source = data_source
        self.is_main = is_main
        self.barrier = barrier
        self.last_step: int | None = None

    def _validate(self, model: Any, step: int) -> None:
        if self.last_step == step:
            return
        self.last_step = step
        if self.is_main:
            # Sampling must not move the training's random state (rollouts, dropout).
            cpu_state = torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            try:
                results = self.evaluator.evaluate(
                    model, self.tokenizer, self.out_dir / f"step_{step:05d}",
                    data_source=self.data_source, prompt_format=self.prompt_format, tag="rl_validation",
                )
            finally:
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state_all(cuda_state)
            self.history.record(step, validation_metrics(results))
        self.barrier()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == 0:  # a resumed run has it already
            self._validate(model, 0)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._validate(model, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._validate(model, state.global_step)


def validation_metrics(results: dict[str, Any]) -> dict[str, float]:
    """`val/<metric>` from an Evaluator's results: the average over its benchmarks of pass@k,
    any-correct, entropy on the policy's own samples, mean length."""
    out = {}
    for key, value in (results.get("average") or {}).items():
        wanted = key.startswith("pass@") or key in ("any_correct", "entropy", "mean_tokens", "no_think_share")
        if wanted and value is not None and not math.isnan(float(value)):
            out[f"val/{key}"] = float(value)
    return out
