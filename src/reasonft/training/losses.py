"""Loss terms over per-token log-probabilities, and their weighted composition (METHODS §1b-§1c).

A term turns `log p(y_t)` into a per-token loss, keeps the tokens of the sequences whose
`loss_type` it serves, and reduces them:

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

A new term is a new `LossTerm` subclass plus a `conf/loss/*.yaml` that names it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from reasonft.training.step_totals import StepTotals

REDUCTIONS = ("token", "sequence")
# log(1 - 1e-6): the largest log p the unlikelihood term accepts, so log(1 - p) stays finite.
UL_MAX_LOGP = math.log1p(-1e-6)
_LOG_HALF = math.log(0.5)


class LossTerm(ABC):
    """One weighted loss term applied to the sequences of one `loss_type`."""

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
    def token_loss(self, logp: Tensor) -> Tensor:
        """Elementwise loss of tokens with log-probability `logp` (any shape)."""

    def sum_and_count(
        self, logp: Tensor, mask: Tensor, seq_selector: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(sum over reduction units, number of units); units are tokens or sequences.

        `logp` [B, L] log-probabilities; `mask` [B, L] the scored (response) tokens;
        `seq_selector` [B] the sequences this term applies to. The sum carries gradient.
        """
        keep = mask.bool() & seq_selector.bool()[:, None]
        values = self.token_loss(logp[keep])
        if self.reduction == "token":
            return values.sum(), keep.sum()
        per_token = values.new_zeros(logp.shape).index_put(keep.nonzero(as_tuple=True), values)
        n_tokens = keep.sum(dim=1)
        has_tokens = n_tokens > 0
        seq_means = per_token.sum(dim=1)[has_tokens] / n_tokens[has_tokens]
        return seq_means.sum(), has_tokens.sum()

    def __call__(self, logp: Tensor, mask: Tensor, seq_selector: Tensor) -> Tensor:
        """The term's (unweighted) reduced value; 0 when it has no tokens in the batch."""
        total, count = self.sum_and_count(logp, mask, seq_selector)
        return total / count.clamp(min=1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(weight={self.weight}, reduction={self.reduction!r}, "
            f"loss_type={self.loss_type!r})"
        )


class CrossEntropyTerm(LossTerm):
    """Negative log-likelihood `-log p(y_t)`."""

    def token_loss(self, logp: Tensor) -> Tensor:
        return -logp


def log1m_exp(logp: Tensor) -> Tensor:
    """`log(1 - exp(logp))` for `logp < 0`, accurate on both sides of `log 0.5`."""
    small = logp < _LOG_HALF
    # Each branch sees only inputs where it is accurate, so neither produces inf/NaN gradients.
    safe_small = torch.where(small, logp, torch.full_like(logp, _LOG_HALF - 1.0))
    safe_large = torch.where(small, torch.full_like(logp, _LOG_HALF), logp)
    return torch.where(
        small, torch.log1p(-torch.exp(safe_small)), torch.log(-torch.expm1(safe_large))
    )


class UnlikelihoodTerm(LossTerm):
    """Unlikelihood `-log(1 - p(y_t))`, with `log p` clamped at `log(1 - 1e-6)` (METHODS §1b)."""

    def token_loss(self, logp: Tensor) -> Tensor:
        return -log1m_exp(logp.clamp(max=UL_MAX_LOGP))


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

    def __call__(
        self,
        logp: Tensor,
        target_mask: Tensor,
        loss_type_ids: Tensor,
        loss_types: Sequence[str],
        step_totals: StepTotals | None = None,
    ) -> LossOutput:
        """Apply every term to the sequences whose `loss_types[loss_type_ids[b]]` is its type,
        normalised by the step's count of the term's units (`step_totals`) or, without it, by
        this micro-batch's own count."""
        total = logp.new_zeros(())
        values: dict[str, TermValue] = {}
        for name, term in self.terms.items():
            if term.loss_type in loss_types:
                selector = loss_type_ids == loss_types.index(term.loss_type)
            else:
                selector = torch.zeros_like(loss_type_ids, dtype=torch.bool)
            term_sum, count = term.sum_and_count(logp, target_mask, selector)
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
