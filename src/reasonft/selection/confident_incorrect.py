"""OXA suppress set (METHODS.md §1b): the base student's most confident wrong answers (loss type ul).

Official rule: among the student's own samples (`source == "self"`) that the verifier marked
incorrect, drop PPL < 1.2 (degenerate repetition), keep at most one response per prompt (its
lowest PPL), then the globally lowest-PPL N = 50,000.

Records tied at the cut-off PPL are kept by `cutoff_ties`:
- `row_order` (default): the earlier rows, so that the kept set does not depend on how the
  candidates happen to be streamed.
- `official_heap`: as the official script's bounded max-heap keeps them: the candidates (each
  prompt's best, prompts in order of their first record, a prompt's own in PPL order) are pushed
  in turn into a heap of the N lowest, keyed (-PPL, arrival); once it is full, a candidate
  replaces the top only when its PPL is strictly lower, and the top among equal PPLs is the
  earliest arrival. Which tied records survive then depends on what arrived after them.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import datasets
import numpy as np

from reasonft.selection.base import Selection, Selector, check_positive, shortfall_report
from reasonft.selection.simple import lowest_ppl_per_prompt_then_global

CUTOFF_TIES = ("row_order", "official_heap")


def official_heap(
    prompt_ids: np.ndarray, ppl: np.ndarray, pool: np.ndarray, max_per_prompt: int | None, n: int
) -> tuple[np.ndarray, int]:
    """The rows the official bounded heap keeps (module docstring), and how many candidates
    survived the per-prompt cap."""
    order = pool[np.lexsort((pool, ppl[pool]))]  # each prompt's own in (PPL, row) order
    by_prompt: dict[object, list[int]] = {}
    for row in np.sort(pool):  # prompts in order of their first record
        by_prompt.setdefault(prompt_ids[row], [])
    for row in order:
        best = by_prompt[prompt_ids[row]]
        if max_per_prompt is None or len(best) < max_per_prompt:
            best.append(int(row))
    heap: list[tuple[float, int, int]] = []
    arrivals = [row for best in by_prompt.values() for row in best]
    for arrival, row in enumerate(arrivals):
        item = (-float(ppl[row]), arrival, row)
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    return np.asarray(sorted(row for _, _, row in heap), dtype=np.int64), len(arrivals)


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
        cutoff_ties: str = "row_order",
    ) -> None:
        super().__init__(only_correct=False, sources=sources, exclude_sources=exclude_sources)
        if cutoff_ties not in CUTOFF_TIES:
            raise ValueError(
                f"select[{self.name}]: cutoff_ties={cutoff_ties!r}; choose one of {CUTOFF_TIES}"
            )
        self.cutoff_ties = cutoff_ties
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
        keep_lowest = (
            official_heap if self.cutoff_ties == "official_heap" else lowest_ppl_per_prompt_then_global
        )
        chosen, n_allowed = keep_lowest(
            frame["prompt_id"].to_numpy(), ppl, pool, self.max_per_prompt, self.n
        )
        report = {
            "sources": self.sources,
            "min_ppl": self.min_ppl,
            "max_per_prompt": self.max_per_prompt,
            "cutoff_ties": self.cutoff_ties,
            "skipped": skipped,
            "n_candidates": len(pool),
            "n_after_per_prompt_cap": n_allowed,
            "max_selected_ppl": float(ppl[chosen].max()) if len(chosen) else None,
            **shortfall_report(self.n, len(chosen)),
        }
        return self.finish(ds, chosen, report)
