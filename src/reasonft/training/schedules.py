"""Learning-rate schedules for `train.scheduler`, called as `scheduler(optimizer, total_steps=N)`."""

from __future__ import annotations

import math

import torch
from transformers import get_cosine_schedule_with_warmup


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.03
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `ceil(warmup_ratio * total_steps)` steps, then cosine to 0 (§1d)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"train.scheduler.warmup_ratio={warmup_ratio} must be in [0, 1)")
    return get_cosine_schedule_with_warmup(
        optimizer, math.ceil(warmup_ratio * total_steps), total_steps
    )
