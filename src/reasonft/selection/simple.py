"""Baseline selectors: everything, a seeded random sample, the lowest-PPL responses, one teacher."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from reasonft.selection.base import (
    Selection,
    Selector,
    check_positive,
    first_per_prompt,
    shortfall_report,
)


class AllSelector(Selector):
    """Every record that passes the filters (by default: verified correct)."""

    name = "all"

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
        _, keep, skipped = self.filtered(ds)
        return self.finish(ds, np.flatnonzero(keep), {"skipped": skipped})


class RandomSelector(Selector):
    """A seeded uniform sample of `n` records (official SFT baseline: 50k verified teacher responses).

    With `max_per_prompt`, a record is skipped when its prompt already has that many in the sample
    (the sample is a random order walked front to back), so the cap never biases which prompts win.
    """

    name = "random"

    def __init__(
        self,
        n: int = 50_000,
        max_per_prompt: int | None = None,
        only_correct: bool = True,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(only_correct, sources, exclude_sources, seed)
        check_positive("n", n, self.name)
        check_positive("max_per_prompt", max_per_prompt, self.name, allow_none=True)
        self.n = int(n)
        self.max_per_prompt = None if max_per_prompt is None else int(max_per_prompt)

    def __call__(self, ds: datasets.Dataset) -> Selection:
        frame, keep, skipped = self.filtered(ds)
        pool = np.flatnonzero(keep)
        order = np.random.default_rng(self.seed).permutation(pool)
        allowed = order[first_per_prompt(frame["prompt_id"].to_numpy(), order, self.max_per_prompt)]
        chosen = allowed[: self.n]
        report = {
            "skipped": skipped,
            "n_candidates": len(pool),
            "n_after_per_prompt_cap": len(allowed),
            "max_per_prompt": self.max_per_prompt,
            "seed": self.seed,
            **shortfall_report(self.n, len(chosen)),
        }
        return self.finish(ds, chosen, report)


def lowest_ppl_per_prompt_then_global(
    prompt_ids: np.ndarray, ppl: np.ndarray, pool: np.ndarray, max_per_prompt: int | None, n: int
) -> tuple[np.ndarray, int]:
    """Of the rows `pool`: each prompt's `max_per_prompt` lowest-PPL rows, then the `n` lowest overall.

    Equal PPLs are ordered by row index (earlier row first), so the result is deterministic.
    Returns the chosen rows (lowest PPL first) and how many survived the per-prompt cap.
    """
    order = pool[np.lexsort((pool, ppl[pool]))]
    allowed = order[first_per_prompt(prompt_ids, order, max_per_prompt)]
    return allowed[:n], len(allowed)


class LowestPPLSelector(Selector):
    """SFT_LP: the `n` lowest-PPL verified responses, at most `max_per_prompt` (official 1) per prompt."""

    name = "ppl_lowest"
    score_columns = ("ppl",)

    def __init__(
        self,
        n: int = 50_000,
        max_per_prompt: int | None = 1,
        only_correct: bool = True,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] | None = None,
    ) -> None:
        super().__init__(only_correct, sources, exclude_sources)
        check_positive("n", n, self.name)
        check_positive("max_per_prompt", max_per_prompt, self.name, allow_none=True)
        self.n = int(n)
        self.max_per_prompt = None if max_per_prompt is None else int(max_per_prompt)

    def __call__(self, ds: datasets.Dataset) -> Selection:
        frame, keep, skipped = self.filtered(ds, ["ppl"])
        pool = np.flatnonzero(keep)
        ppl = frame["ppl"].to_numpy(float)
        chosen, n_allowed = lowest_ppl_per_prompt_then_global(
            frame["prompt_id"].to_numpy(), ppl, pool, self.max_per_prompt, self.n
        )
        report = {
            "skipped": skipped,
            "n_candidates": len(pool),
            "n_after_per_prompt_cap": n_allowed,
            "max_per_prompt": self.max_per_prompt,
            "max_selected_ppl": float(ppl[chosen].max()) if len(chosen) else None,
            **shortfall_report(self.n, len(chosen)),
        }
        return self.finish(ds, chosen, report)


class SingleTeacherSelector(Selector):
    """All (by default verified-correct) responses of one teacher, named by its `source`."""

    name = "single_teacher"

    def __init__(self, teacher: str, only_correct: bool = True) -> None:
        if not teacher:
            raise ValueError(
                "select[single_teacher]: `teacher` must name a source, e.g. teacher=QwQ-32B"
            )
        super().__init__(only_correct=only_correct, sources=[str(teacher)])
        self.teacher = str(teacher)

    def __call__(self, ds: datasets.Dataset) -> Selection:
        frame, keep, skipped = self.filtered(ds)
        present = sorted(frame["source"].astype(str).unique().tolist())
        if self.teacher not in present:
            raise ValueError(
                f"select[single_teacher]: teacher {self.teacher!r} has no records; sources present: "
                f"{present}"
            )
        return self.finish(ds, np.flatnonzero(keep), {"teacher": self.teacher, "skipped": skipped})
