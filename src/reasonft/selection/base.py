"""The selector protocol and the pool filters every selector shares.

A selector is a plain class built by Hydra from `conf/select/<name>.yaml`; calling it on a
`datasets.Dataset` of scored records returns a `Selection`: the chosen records (input order kept,
with the columns `loss_type` and `selected_by` added) and a report dict that counts everything
that was filtered out or could not be filled.

Every selector declares the columns it reads (`requires`), so a run can check at start-up that
the earlier stages produce them; at select time a required column that is missing or null in
every record stops with the option to change, and a selection that comes out empty stops with
its report (`EmptySelection`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from reasonft.data.records import SCORE_COLUMNS, SELECT_COLUMNS, require_columns

log = logging.getLogger(__name__)

STRING = datasets.Value("string")

# The score config that fills each score column (every one of them fills n_tokens).
SCORE_OPTION = {
    "ppl": "score=ppl (or score=galp)",
    "galp": "score=galp (or score=ppl)",
    "lalp": "score=lalp",
    "step_logps": "score=lalp",
    "n_tokens": "any score config (score=ppl|galp|lalp)",
    "n_scored_tokens": "any score config (score=ppl|galp|lalp)",
}


class MissingColumn(ValueError):
    """A column a selector needs is absent, or null in every record."""


class EmptySelection(ValueError):
    """A selection with no record; `selection` holds the (empty) records and the full report."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        report = selection.report
        super().__init__(
            f"select={report.get('selector')}: no record selected from a pool of "
            f"{report.get('n_pool')}; filtered out: {_filtered_out(report)}. Nothing to train "
            "on: loosen the filters (select.only_correct, select.sources, select.exclude_sources, "
            "the score ranges) or check the verify and score stages. Full report: "
            f"{_compact(report)}"
        )


def _filtered_out(report: dict[str, Any]) -> str:
    parts = {name: report[name].get("skipped") for name in ("promote", "suppress") if name in report}
    if parts:
        return "; ".join(f"{name}: {skipped or 'nothing'}" for name, skipped in parts.items())
    return str(report.get("skipped") or "nothing")


def _compact(report: dict[str, Any], limit: int = 1500) -> str:
    text = str(report)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def produced_score_columns(ds: datasets.Dataset) -> list[str]:
    """The score columns `ds` carries with at least one value."""
    return [c for c in SCORE_COLUMNS if c in ds.column_names and not _all_null(ds, c)]


def _all_null(ds: datasets.Dataset, column: str) -> bool:
    return bool(ds.select_columns([column]).to_pandas()[column].isna().all())


def check_required_columns(
    ds: datasets.Dataset, requires: Iterable[str], strategy: str, group: str = "select"
) -> None:
    """Stop, naming the option to change (`<group>=<strategy>`), when a required column is
    missing or all null."""
    for column in sorted(set(requires)):
        if column in ds.column_names and (len(ds) == 0 or not _all_null(ds, column)):
            continue
        state = "lacks" if column not in ds.column_names else "has only nulls in"
        if column == "correct":
            raise MissingColumn(
                f"{group}={strategy} needs column correct, which the records {state}; run the "
                f"verify stage before {group} (stages: [..., verify, score, {group}, ...])"
            )
        option = SCORE_OPTION.get(column)
        if option is None:
            raise MissingColumn(
                f"{group}={strategy} needs column {column}, which the records {state}; "
                f"they carry {ds.column_names}"
            )
        raise MissingColumn(
            f"{group}={strategy} needs column {column}; the score stage produced "
            f"{produced_score_columns(ds)}; choose {option} or score.method=all"
        )


@dataclass
class Selection:
    """What a selector returns: the selected records and a report of how they were chosen."""

    records: datasets.Dataset
    report: dict[str, Any] = field(default_factory=dict)


def as_names(names: Iterable[str] | None) -> list[str] | None:
    """Hydra hands lists over as ListConfig; keep plain string lists (None stays None)."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


class Selector(ABC):
    """Base class: pool filtering by source and verification, and the finishing step.

    Subclasses set `name` and `loss_type`, and implement `__call__(ds) -> Selection` by
    filtering with `candidates(...)` and finishing with `finish(...)`.
    """

    name: str = "selector"
    loss_type: str = "ce"
    # Score columns the selection reads (besides `correct`, see `requires`).
    score_columns: tuple[str, ...] = ()

    def __init__(
        self,
        only_correct: bool = True,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] | None = None,
        seed: int = 42,
    ) -> None:
        self.only_correct = bool(only_correct)
        self.sources = as_names(sources)
        self.exclude_sources = as_names(exclude_sources)
        self.seed = int(seed)
        if not isinstance(self.loss_type, str) or not self.loss_type:
            raise ValueError(
                f"{type(self).__name__}: loss_type {self.loss_type!r} must name a record kind "
                "(a loss term's loss_type, with its share in train.per_step)"
            )

    @property
    def loss_types(self) -> tuple[str, ...]:
        """The record kinds its selection yields (start-up checks each has a loss term)."""
        return (self.loss_type,)

    @property
    def requires(self) -> frozenset[str]:
        """Columns the selection reads beyond prompt_id and source: its score columns, and
        `correct` when it filters on verification."""
        return frozenset({*self.score_columns, *(["correct"] if self.only_correct else [])})

    @property
    def reads_self_samples(self) -> bool:
        """Whether it selects the student's own samples (records of source `self`), which then
        join the pool (the plan adds the `generate` stage)."""
        return self.sources is not None and "self" in self.sources

    @abstractmethod
    def __call__(self, ds: datasets.Dataset) -> Selection:
        """Select from the pool `ds`; the result keeps input order and adds the selection columns."""

    # ---- shared steps -----------------------------------------------------------------------

    def frame(self, ds: datasets.Dataset, columns: Sequence[str]) -> pd.DataFrame:
        """The named columns (plus prompt_id, source) as a DataFrame; refuses a second selection."""
        taken = [c for c in SELECT_COLUMNS if c in ds.column_names]
        if taken:
            raise ValueError(
                f"select[{self.name}]: records already carry selection column(s) {taken}; a stage "
                f"only adds columns, so remove them first (ds.remove_columns({taken}))."
            )
        return read_frame(ds, columns, f"select[{self.name}]")

    def filtered(
        self, ds: datasets.Dataset, score_columns: Sequence[str] = (), correctness: str | None = None
    ) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
        """The pool as a frame (score columns and what the filters read), the mask of the records
        that pass this selector's filters — `correctness` ("correct"/"incorrect"; by default
        "correct" when `only_correct`), sources, finite scores — and the counts of the others."""
        if correctness is None and self.only_correct:
            correctness = "correct"
        check_required_columns(
            ds, {*self.requires, *score_columns, *(["correct"] if correctness else [])}, self.name
        )
        frame = self.frame(ds, [*score_columns, *(["correct"] if correctness else [])])
        skipped: dict[str, int] = {}
        keep = self.candidates(frame, skipped, correctness, score_columns, nan_rows(ds, score_columns))
        return frame, keep, skipped

    def candidates(
        self,
        frame: pd.DataFrame,
        skipped: dict[str, int],
        correctness: str | None,
        score_columns: Sequence[str] = (),
        nan: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """`filter_pool` with this selector's source filters."""
        return filter_pool(
            frame,
            skipped,
            sources=self.sources,
            exclude_sources=self.exclude_sources,
            correctness=correctness,
            score_columns=score_columns,
            nan=nan,
        )

    def finish(
        self, ds: datasets.Dataset, indices: Iterable[int], report: dict[str, Any]
    ) -> Selection:
        """Keep `indices` (in input order), add `loss_type` and `selected_by`, complete the report."""
        chosen = np.sort(np.asarray(list(indices), dtype=np.int64))
        if len(np.unique(chosen)) != len(chosen):
            raise RuntimeError(f"select[{self.name}]: a record was selected twice")
        columns = {"loss_type": self.loss_type, "selected_by": self.name}
        records = take_rows(ds, chosen, columns)
        n = len(records)
        full = {
            "selector": self.name,
            "loss_type": self.loss_type,
            "n_pool": len(ds),
            "n_selected": n,
            **report,
        }
        shortfall = full.get("shortfall", 0)
        if shortfall:
            log.warning(
                "select[%s]: %d short of the %s asked for", self.name, shortfall, full.get("n")
            )
        selection = Selection(records=records, report=full)
        if n == 0:
            raise EmptySelection(selection)
        return selection


def take_rows(
    ds: datasets.Dataset, rows: np.ndarray, constants: dict[str, str]
) -> datasets.Dataset:
    """Rows `rows` (sorted, unique) of `ds` as a new Dataset, with constant string columns added.

    The rows are gathered into one contiguous in-memory Arrow table. (`Dataset.select` would
    only keep an index mapping, and writing or extending such a Dataset copies row by row.)
    Keeping every row adds the columns to the pool itself, without copying it.
    """
    if len(rows) == len(ds):
        for name, value in constants.items():
            ds = ds.add_column(
                name,
                [value] * len(ds),
                feature=STRING,
                new_fingerprint=generate_random_fingerprint(),
            )
        return ds
    table = ds.with_format("arrow")[rows.tolist()].combine_chunks()
    for name, value in constants.items():
        table = table.append_column(name, pa.array([value] * len(rows), type=pa.string()))
    features = datasets.Features({**ds.features, **dict.fromkeys(constants, STRING)})
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def read_frame(ds: datasets.Dataset, columns: Sequence[str], stage: str) -> pd.DataFrame:
    """`prompt_id`, `source` and the named columns as a DataFrame indexed by row number."""
    needed = list(dict.fromkeys(["prompt_id", "source", *columns]))
    require_columns(ds, needed, stage)
    frame = ds.select_columns(needed).to_pandas()
    frame.index = np.arange(len(frame))
    missing_id = frame["prompt_id"].isna().to_numpy()
    if missing_id.any():
        raise ValueError(
            f"{stage}: `prompt_id` is null in {int(missing_id.sum())} record(s), first at row "
            f"{int(np.flatnonzero(missing_id)[0])}; every record needs its prompt's id"
        )
    return frame


def filter_pool(
    frame: pd.DataFrame,
    skipped: dict[str, int],
    *,
    sources: Sequence[str] | None = None,
    exclude_sources: Sequence[str] | None = None,
    correctness: str | None = None,
    score_columns: Sequence[str] = (),
    nan: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Boolean mask of rows that pass the source filters, the correctness filter and have scores.

    A score that is NaN (`nan[column]`, e.g. the official PPL script's value for a response of at
    most one token, which it keeps because `NaN < 1.2` is false) is no score: counted as
    `<column>_nan`, apart from null scores (`missing_<column>`), and never selected.

    `correctness` is "correct", "incorrect" or None (no filter). Records whose `correct` is null
    (verification failed or timed out) are neither; they are counted as `unverified`. Every
    excluded row is counted in `skipped` under the first reason that excluded it.
    """
    if correctness not in (None, "correct", "incorrect"):
        raise ValueError(f"correctness must be 'correct', 'incorrect' or None, got {correctness!r}")
    keep = np.ones(len(frame), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        nonlocal keep
        newly = keep & mask
        if newly.any():
            skipped[reason] = skipped.get(reason, 0) + int(newly.sum())
        keep &= ~mask

    source = frame["source"].astype(str).to_numpy()
    if sources is not None:
        drop(~np.isin(source, list(sources)), "source_not_in_sources")
    if exclude_sources is not None:
        drop(np.isin(source, list(exclude_sources)), "source_excluded")
    if correctness is not None:
        verdict = frame["correct"].astype("boolean")
        is_true = verdict.eq(True).fillna(False).to_numpy(bool)
        is_false = verdict.eq(False).fillna(False).to_numpy(bool)
        drop(~(is_true | is_false), "unverified")
        drop(is_false if correctness == "correct" else is_true, f"not_{correctness}")
    for col in score_columns:
        if nan is not None and col in nan:
            drop(nan[col], f"{col}_nan")
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
        drop(~np.isfinite(values), f"missing_{col}")
    return keep


def nan_rows(ds: datasets.Dataset, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Per float column, the rows holding NaN (not null: pandas would merge the two)."""
    out = {}
    for col in columns:
        values = ds.with_format("arrow")[col]
        if pa.types.is_floating(values.type):
            out[col] = pc.fill_null(pc.is_nan(values), False).to_numpy(zero_copy_only=False)
    return out


def shortfall_report(n_asked: int, n_selected: int) -> dict[str, int]:
    """The `n` a selector was asked for and how many it could not deliver."""
    return {"n": int(n_asked), "shortfall": max(0, int(n_asked) - int(n_selected))}


def first_per_prompt(
    prompt_ids: np.ndarray, order: np.ndarray, max_per_prompt: int | None
) -> np.ndarray:
    """Positions (into `order`) of the first `max_per_prompt` entries of each prompt in `order`."""
    if max_per_prompt is None:
        return np.arange(len(order))
    ordered = pd.Series(prompt_ids[order])
    rank_in_prompt = ordered.groupby(ordered, sort=False).cumcount().to_numpy()
    return np.flatnonzero(rank_in_prompt < max_per_prompt)


def check_positive(name: str, value: int | None, selector: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or int(value) < 1:
        raise ValueError(f"select[{selector}]: `{name}` must be a positive integer, got {value!r}")
