"""Loss terms over a micro-batch's per-token inputs, and their weighted composition (METHODS §1b-§1c).

A term turns its inputs (`LossInputs`: `log p(y_t)`, the model's entropy at each position, the
scored-token mask and the batch's per-record columns) into a per-token loss, keeps the tokens of
the sequences whose `loss_type` it serves, and reduces them:

- `reduction="token"`: sum over the term's tokens / the term's token count;
- `reduction="sequence"`: sum over the term's sequences of each sequence's token mean / the
  term's sequence count.

The count is the whole optimiser step's (all micro-batches, all ranks) when the micro-batch
carries its `StepTotals`; the micro-batch's own count otherwise. With step totals, the sum over
a step's micro-batches and ranks of `LossComposition`'s total is exactly
`sum_term weight * (term over the step)` — the official OXA_FULL objective
`mean_CE_seqs CE(seq) + lambda * mean_UL_seqs UL(seq)` when both terms reduce by sequence —
whatever the micro-batch size, accumulation and world size; StudentModule scales the returned
loss so that Lightning's accumulation and DDP's gradient averaging give that sum's gradient.

A new term is a new `LossTerm` subclass plus a `conf/loss/*.yaml` that names it; a new kind of
record is a term with a new `loss_type` and that kind's share of every step in `train.per_step`.
A term that reads a record column (a per-record weight) names it in `columns`: the datamodule
keeps it and the batch carries it as a `[B]` tensor.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from reasonft.training.step_totals import StepTotals

REDUCTIONS = ("token", "sequence")
# log(1 - 1e-6): the largest log p the unlikelihood term accepts, so log(1 - p) stays finite.
UL_MAX_LOGP = math.log1p(-1e-6)
_LOG_HALF = math.log(0.5)


@dataclass(frozen=True)
class LossInputs:
    """What every term of one micro-batch sees. `logp`, `entropy` [B, L] (0 where not scored;
    both carry gradient), `mask` [B, L] the scored tokens, `loss_type` [B] each record's index
    into `loss_types`, `columns` the record columns the terms asked for, each a [B] tensor."""

    logp: Tensor
    entropy: Tensor
    mask: Tensor
    loss_type: Tensor
    loss_types: tuple[str, ...]
    columns: Mapping[str, Tensor]

    @classmethod
    def of(
        cls,
        logp: Tensor,
        mask: Tensor,
        loss_type: Tensor,
        loss_types: Sequence[str],
        entropy: Tensor | None = None,
        columns: Mapping[str, Tensor] | None = None,
    ) -> LossInputs:
        """Inputs of a hand-made batch; the entropy 0 where it was not computed."""
        return cls(
            logp=logp,
            entropy=torch.zeros_like(logp) if entropy is None else entropy,
            mask=mask,
            loss_type=loss_type,
            loss_types=tuple(loss_types),
            columns=dict(columns or {}),
        )

    def rows_of(self, loss_type: str) -> Tensor:
        """[B] bool: the records of `loss_type`."""
        if loss_type not in self.loss_types:
            return torch.zeros_like(self.loss_type, dtype=torch.bool)
        return self.loss_type == self.loss_types.index(loss_type)


class LossTerm(ABC):
    """One weighted loss term applied to the sequences of one `loss_type`."""

    # Record columns the term reads (`LossInputs.columns`), numeric and set on every record.
    columns: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, weight: float = 1.0, reduction: str = "token", loss_type: str = "ce"
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"{type(self).__name__}: reduction={reduction!r}; choose one of {REDUCTIONS}"
            )
        if not math.isfinite(weight):
            raise ValueError(f"{type(self).__name__}: weight={weight} must be a finite number")
        self.weight = float(weight)
        self.reduction = reduction
        self.loss_type = loss_type

    @abstractmethod
    def token_loss(self, inputs: LossInputs) -> Tensor:
        """[B, L] loss of every position (only the term's scored tokens are kept; the others
        must be finite)."""

    def sum_and_count(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """(sum over reduction units, number of units) over the scored tokens of the records of
        this term's `loss_type`; units are tokens or sequences. The sum carries gradient."""
        logp = inputs.logp
        keep = inputs.mask.bool() & inputs.rows_of(self.loss_type)[:, None]
        values = self.token_loss(inputs)[keep]
        if self.reduction == "token":
            return values.sum(), keep.sum()
        per_token = values.new_zeros(logp.shape).index_put(keep.nonzero(as_tuple=True), values)
        n_tokens = keep.sum(dim=1)
        has_tokens = n_tokens > 0
        seq_means = per_token.sum(dim=1)[has_tokens] / n_tokens[has_tokens]
        return seq_means.sum(), has_tokens.sum()

    def __call__(self, inputs: LossInputs) -> Tensor:
        """The term's (unweighted) reduced value; 0 when it has no tokens in the batch."""
        total, count = self.sum_and_count(inputs)
        return total / count.clamp(min=1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(weight={self.weight}, reduction={self.reduction!r}, "
            f"loss_type={self.loss_type!r})"
        )


class CrossEntropyTerm(LossTerm):
    """Negative log-likelihood `-log p(y_t)`."""

    def token_loss(self, inputs: LossInputs) -> Tensor:
        return -inputs.logp


def log1m_exp(logp: Tensor) -> Tensor:
    """`log(1 - exp(logp))` for `logp < 0`, accurate on both sides of `log 0.5`."""
    small = logp < _LOG_HALF
    # Each branch sees only inputs where it is accurate, so neither produces inf/NaN gradients.
    safe_small = torch.where(small, logp, torch.full_like(logp, _LOG_HALF - 1.0))
    safe_large = torch.where(small, torch.full_like(logp, _LOG_HALF), logp)
    return torch.where(
        small, torch.log1p(-torch.exp(safe_small)), torch.log(-torch.expm1(safe_large))
    )


def unlikelihood(logp: Tensor) -> Tensor:
    """`-log(1 - p)` of tokens with log-probability `logp` (any shape), `log p` clamped at
    `log(1 - 1e-6)` (METHODS §1b)."""
    return -log1m_exp(logp.clamp(max=UL_MAX_LOGP))


class UnlikelihoodTerm(LossTerm):
    """Unlikelihood `-log(1 - p(y_t))` (`unlikelihood`)."""

    def token_loss(self, inputs: LossInputs) -> Tensor:
        return unlikelihood(inputs.logp)


@dataclass(frozen=True)
class TermValue:
    """One term on one micro-batch: `value` (differentiable, unweighted) = `total` / the step's
    (or, without step totals, the micro-batch's) count, and the detached `total`/`count` of the
    micro-batch's own reduction units so that values can be pooled over many micro-batches."""

    value: Tensor
    total: Tensor
    count: Tensor
    weight: float


@dataclass(frozen=True)
class LossOutput:
    total: Tensor
    terms: dict[str, TermValue]


class LossComposition:
    """`sum_name weight_name * term_name(records of the term's loss_type)`."""

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        terms = dict(terms.items())
        if not terms:
            raise ValueError(
                "loss: `terms` is empty; give at least one term (see conf/loss/sft.yaml)"
            )
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise TypeError(
                    f"loss.terms.{name}: expected a LossTerm (a `_target_` such as "
                    f"reasonft.training.losses.CrossEntropyTerm), got {type(term).__name__}"
                )
        self.terms: dict[str, LossTerm] = terms

    @property
    def loss_types(self) -> tuple[str, ...]:
        """The record `loss_type`s some term trains on, in term order."""
        return tuple(dict.fromkeys(term.loss_type for term in self.terms.values()))

    @property
    def columns(self) -> tuple[str, ...]:
        """The record columns some term reads."""
        return tuple(dict.fromkeys(c for term in self.terms.values() for c in term.columns))

    def __call__(self, inputs: LossInputs, step_totals: StepTotals | None = None) -> LossOutput:
        """Apply every term to the records of its `loss_type`, normalised by the step's count
        of the term's units (`step_totals`) or, without it, by this micro-batch's own count."""
        total = inputs.logp.new_zeros(())
        values: dict[str, TermValue] = {}
        for name, term in self.terms.items():
            term_sum, count = term.sum_and_count(inputs)
            if step_totals is None:
                value = term_sum / count.clamp(min=1)
            else:
                units = max(step_totals.units(term.loss_type, term.reduction), 1)
                value = term_sum / units * step_totals.step_fraction
            total = total + term.weight * value
            values[name] = TermValue(value, term_sum.detach(), count.detach(), term.weight)
        return LossOutput(total, values)

    def __repr__(self) -> str:
        return f"LossComposition({self.terms!r})"
