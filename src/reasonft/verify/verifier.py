"""The verify stage: adds `correct`, `pred_answer` and `verify_status` to records (METHODS.md §3).

The answer is read here (graders.py: the answer rule); the comparisons with the gold answer
(every accepted form of it) run in a pool of worker processes with a time limit per item
(pool.py); the report counts the outcomes (report.py).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import datasets
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from reasonft.data.records import (
    ANSWER_ALTERNATIVES,
    VERIFY_COLUMNS,
    as_dataset,
    like_input,
    require_columns,
)
from reasonft.verify.graders import (
    ANSWER_RULES,
    DEFAULT_VERIFY_FN,
    OFFICIAL_VERIFY_FN,
    grader_name,
    import_object,
    read_answer,
    require_official_dependencies,
)

# The default verify_fn's address in the configs (graders.DEFAULT_VERIFY_FN), kept so that
# artifact keys, which hash it, do not change.
from reasonft.verify.math_equal import math_equal  # noqa: F401
from reasonft.verify.pool import Pool
from reasonft.verify.report import verify_report


class Verifier:
    """Adds `correct`, `pred_answer` and `verify_status` to records with `response` and `answer`.

    Args:
        timeout: seconds one comparison may take (wall clock, enforced by killing the worker).
        workers: worker processes.
        verify_fn: dotted path of `fn(pred, gold) -> bool` comparing two answer strings
            (default: math-verify; `reasonft.verify.official.official_equal` for the official
            grader); raising counts as status "error".
        answer_rule: how the answer is read: "last_think" (the last box after the last
            `</think>`, the whole response without one) or "official" (no `</think>` ->
            status "no_think", incorrect; the last `\\boxed{}` between the first `</think>` and
            the next).
        start_method: "forkserver" (default, see reasonft.verify.pool), "spawn" or "fork".
        show_progress: draw a rich progress bar.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        workers: int = 2,
        verify_fn: str = DEFAULT_VERIFY_FN,
        start_method: str = "forkserver",
        show_progress: bool = True,
        answer_rule: str = "last_think",
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"verify.timeout={timeout}: must be > 0 seconds")
        if int(workers) < 1:
            raise ValueError(f"verify.workers={workers}: must be >= 1")
        if start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"verify.start_method={start_method!r}: choose from {mp.get_all_start_methods()}"
            )
        if answer_rule not in ANSWER_RULES:
            raise ValueError(
                f"verify.answer_rule={answer_rule!r}: choose one of {list(ANSWER_RULES)} "
                "(verify=official selects the official rule and comparison together)"
            )
        import_object(verify_fn)  # fail now, not in a worker
        if verify_fn == OFFICIAL_VERIFY_FN:
            require_official_dependencies()
        self.answer_rule = answer_rule
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.verify_fn = verify_fn
        self.start_method = start_method
        self.show_progress = show_progress
        self._kept: Pool | None = None

    @contextmanager
    def kept_workers(self) -> Iterator[Verifier]:
        """Calls inside the block share one pool of workers, started and warmed up once, instead
        of a pool per call: for many small calls (an RL reward every step), where starting
        workers would cost more than verifying."""
        if self._kept is not None:
            yield self
            return
        self._kept = Pool(self.workers, self.verify_fn, self.start_method, self.timeout)
        try:
            yield self
        finally:
            self._kept.close()
            self._kept = None

    @property
    def grader(self) -> str:
        """A short name for reports: "math_verify", "official", "rl", or the custom verify_fn."""
        return grader_name(self.verify_fn, self.answer_rule)

    def __call__(
        self, records: datasets.Dataset | list[dict[str, Any]]
    ) -> tuple[Any, dict[str, Any]]:
        ds = as_dataset(records)
        require_columns(ds, ["response", "answer"], "verify")
        present = [c for c in VERIFY_COLUMNS if c in ds.column_names]
        if present:
            raise ValueError(
                f"verify: records already have {present}; remove those columns to verify again"
            )
        started = time.monotonic()
        n = len(ds)
        preds, golds, statuses = [""] * n, [""] * n, [""] * n
        notes: dict[int, str] = {}
        to_compare: list[int] = []
        for index, (response, gold) in enumerate(_pairs(ds)):
            pred, found = (
                read_answer(response, self.answer_rule) if isinstance(response, str)
                else (None, "no_answer")
            )
            preds[index] = pred or ""
            gold = "" if gold is None else str(gold).strip()
            golds[index] = gold
            if pred is None:
                statuses[index] = found
            elif not gold:
                statuses[index], notes[index] = "error", "empty gold answer"
            else:
                to_compare.append(index)

        # One comparison per accepted form of the gold answer (records may carry
        # `answer_alternatives`); a record is correct when any form matches, else it keeps the
        # status of its first form.
        alternatives = ds[ANSWER_ALTERNATIVES] if ANSWER_ALTERNATIVES in ds.column_names else None
        comparisons = [
            ((i, k), preds[i], form)
            for i in to_compare
            for k, form in enumerate(_forms(golds[i], alternatives[i] if alternatives else None))
        ]
        results: dict[int, dict[int, tuple[str, str]]] = defaultdict(dict)
        replaced = 0
        with _progress(self.show_progress) as bar:
            task = bar.add_task("verify", total=n - len(to_compare) + len(comparisons))
            bar.advance(task, n - len(to_compare))
            if comparisons:
                pool = self._kept or Pool(
                    min(self.workers, len(comparisons)),
                    self.verify_fn,
                    self.start_method,
                    self.timeout,
                )
                replaced_before = pool.replaced
                try:
                    for (index, k), status, note in pool.run(iter(comparisons)):
                        results[index][k] = (status, note)
                        bar.advance(task)
                finally:
                    if pool is not self._kept:
                        pool.close()
                replaced = pool.replaced - replaced_before
        by_alternative = 0
        for index, forms in results.items():
            status, note = forms[0]
            if status != "correct" and any(s == "correct" for s, _ in forms.values()):
                status, note = "correct", ""
                by_alternative += 1
            statuses[index] = status
            if note:
                notes[index] = note

        correct = [s == "correct" for s in statuses]
        out = ds.add_column("correct", correct, feature=datasets.Value("bool"))
        out = out.add_column("pred_answer", preds, feature=datasets.Value("string"))
        out = out.add_column("verify_status", statuses, feature=datasets.Value("string"))
        report = {
            **verify_report(ds, statuses, notes),
            "workers_replaced": replaced,
            "timeout_s": self.timeout,
            "workers": self.workers,
            "verify_fn": self.verify_fn,
            "answer_rule": self.answer_rule,
            "grader": self.grader,
            "seconds": round(time.monotonic() - started, 3),
            "correct_by_alternative_answer": by_alternative,
        }
        return like_input(out, records), report


def _forms(gold: str, alternatives: list[str] | None) -> list[str]:
    """The gold answer, then its other accepted forms (stripped, non-empty, distinct)."""
    forms = [gold]
    for form in alternatives or []:
        form = str(form).strip() if form is not None else ""
        if form and form not in forms:
            forms.append(form)
    return forms


def _pairs(ds: datasets.Dataset) -> Iterator[tuple[Any, Any]]:
    """(response, answer) per record, read in batches so large pools are not copied at once."""
    for batch in ds.select_columns(["response", "answer"]).iter(batch_size=1000):
        yield from zip(batch["response"], batch["answer"], strict=True)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
