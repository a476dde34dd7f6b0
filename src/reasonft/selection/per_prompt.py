"""LALP data curation (METHODS.md §2b): per prompt, the one verified response with the best score.

`galp_top` keeps the highest GALP (the GRAPE-style global rule), `lalp_top` the highest LALP (the
paper's method), `lalp_lowest` the lowest LALP (the "local lowest" baseline). Equal scores go to
the earliest record in input order, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import pandas as pd

from reasonft.selection.base import Selection, Selector


class PerPromptScoreSelector(Selector):
    """Per prompt, among the filtered responses, the one with the highest (or lowest) `score`."""

    score: str = "lalp"
    highest: bool = True

    @property
    def score_columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.score,)

    def __init__(
        self,
        only_correct: bool = True,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            only_correct=only_correct, sources=sources, exclude_sources=exclude_sources
        )

    def __call__(self, ds: datasets.Dataset) -> Selection:
        frame, keep, skipped = self.filtered(ds, [self.score])
        pool = np.flatnonzero(keep)
        values = frame[self.score].to_numpy(float)
        # Sort by score (best first), row index second; the first row of each prompt is its pick.
        key = -values[pool] if self.highest else values[pool]
        order = pool[np.lexsort((pool, key))]
        first = ~pd.Series(frame["prompt_id"].to_numpy()[order]).duplicated().to_numpy()
        chosen = order[first]
        n_prompts = frame["prompt_id"].nunique()
        report = {
            "score": self.score,
            "highest": self.highest,
            "skipped": skipped,
            "n_candidates": len(pool),
            "n_prompts": int(n_prompts),
            "prompts_without_candidate": int(n_prompts - len(chosen)),
        }
        return self.finish(ds, chosen, report)


class GALPTopSelector(PerPromptScoreSelector):
    """Per prompt, the correct response with the highest GALP."""

    name = "galp_top"
    score = "galp"
    highest = True


class LALPTopSelector(PerPromptScoreSelector):
    """Per prompt, the correct response with the highest LALP (the LALP paper's curation)."""

    name = "lalp_top"
    score = "lalp"
    highest = True


class LALPLowestSelector(PerPromptScoreSelector):
    """Per prompt, the correct response with the lowest LALP ("local lowest" baseline)."""

    name = "lalp_lowest"
    score = "lalp"
    highest = False
