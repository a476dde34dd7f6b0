"""Per-step totals, carried with every micro-batch so that each loss term is normalised by its own
count over the whole optimiser step (METHODS §1c), whatever the micro-batch size, accumulation
and world size.

The sampler knows every step's sequences before the step starts and yields each micro-batch with
its step's totals as plain data (`StepTotals.as_dict()`); the collated batch holds that dict as
`batch["step_totals"]`, and the module reads it back with `StepTotals.from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepTotals:
    """One optimiser step over all its micro-batches and ranks, per record `loss_type`:
    `sequences` with at least one scored token, and scored `tokens`."""

    sequences: Mapping[str, int]
    tokens: Mapping[str, int]
    # The step's size against a full one (the sum of train.per_step); below 1 only for the
    # partial last step of train.epoch_end=official, whose terms still count as a full step's share.
    step_fraction: float = 1.0

    def units(self, loss_type: str, reduction: str) -> int:
        """The denominator of a term with this `loss_type` and reduction (`token`/`sequence`)."""
        counts = self.tokens if reduction == "token" else self.sequences
        return int(counts.get(loss_type, 0))

    def as_dict(self) -> dict[str, Any]:
        """Plain data that the DataLoader (and its worker processes) and Lightning's batch
        transfer carry unchanged."""
        return {
            "sequences": dict(self.sequences),
            "tokens": dict(self.tokens),
            "step_fraction": float(self.step_fraction),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepTotals:
        return cls(
            sequences={k: int(v) for k, v in data["sequences"].items()},
            tokens={k: int(v) for k, v in data["tokens"].items()},
            step_fraction=float(data["step_fraction"]),
        )
