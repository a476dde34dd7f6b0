"""OXA suppress set (METHODS.md §1b): the base student's most confident wrong answers (loss type ul).

Official rule: among the student's own samples (`source == "self"`) that the verifier marked
incorrect, drop PPL < 1.2 (degenerate repetition), keep at most one response per prompt (its
lowest PPL), then the globally lowest-PPL N = 50,000. Equal PPLs are ordered by row index.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from reasonft.selection.base import Selection, Selector, check_positive, shortfall_report
from reasonft.selection.simple import lowest_ppl_per_prompt_then_global


class ConfidentIncorrectSelector(Selector):
    """Incorrect responses with the lowest PPL >= `min_ppl`, `max_per_prompt` per prompt, `n` in all."""

    name = "confident_incorrect"
    loss_type = "ul"
    score_columns = ("ppl",)

    def __init__(
        self,
        n: int = 50_000,
        min_ppl: float = 1.2,
        max_per_prompt: int | None = 1,
        sources: Sequence[str] | None = ("self",),
        exclude_sources: Sequence[str] | None = None,
    ) -> None:
        super().__init__(only_correct=False, sources=sources, exclude_sources=exclude_sources)
        check_positive("n", n, self.name)
        check_positive("max_per_prompt", max_per_prompt, self.name, allow_none=True)
        self.n = int(n)
        self.min_ppl = float(min_ppl)
        self.max_per_prompt = None if max_per_prompt is None else int(max_per_prompt)

    @property
    def requires(self) -> frozenset[str]:
        """ppl, and `correct` (it keeps the incorrect responses)."""
        return frozenset({*self.score_columns, "correct"})

    def __call__(self, ds: datasets.Dataset) -> Selection:
        frame, keep, skipped = self.filtered(ds, ["ppl"], correctness="incorrect")
        ppl = frame["ppl"].to_numpy(float)
        degenerate = keep & (ppl < self.min_ppl)
        if degenerate.any():
            skipped["ppl_below_min_ppl"] = int(degenerate.sum())
        pool = np.flatnonzero(keep & ~degenerate)
        chosen, n_allowed = lowest_ppl_per_prompt_then_global(
            frame["prompt_id"].to_numpy(), ppl, pool, self.max_per_prompt, self.n
        )
        report = {
            "sources": self.sources,
            "min_ppl": self.min_ppl,
            "max_per_prompt": self.max_per_prompt,
            "skipped": skipped,
            "n_candidates": len(pool),
            "n_after_per_prompt_cap": n_allowed,
            "max_selected_ppl": float(ppl[chosen].max()) if len(chosen) else None,
            **shortfall_report(self.n, len(chosen)),
        }
        return self.finish(ds, chosen, report)
