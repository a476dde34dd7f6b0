"""Benchmark configs (`eval.benchmarks`) and the loading of their problems.

A benchmark is a file (`path`, read with `fields`) or a split of the data source. What a load
read and left out is its load report: for a file the `LoadReport` of `load_records` (with
`on_bad_record: skip`, the skipped records counted by reason and capped by `max_bad_records`);
for a data-source split the source's own report of that split, where it keeps one
(`FileSource.load_report()`), so that records the source skipped show in the evaluation too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, ListConfig, OmegaConf

from reasonft.data.fields import normalize_prompt_text
from reasonft.data.loaders import load_records
from reasonft.data.record_checks import TooManyBadRecords, check_max_bad_records
from reasonft.data.records import ANSWER_ALTERNATIVES, as_dataset

log = logging.getLogger(__name__)

DEFAULT_FIELDS = {"prompt": "problem", "answer": "answer"}
# What a benchmark's problems keep: other accepted answer forms too, for the verifier.
PROBLEM_COLUMNS = ("prompt_id", "prompt", "answer", ANSWER_ALTERNATIVES)
ON_BAD_RECORD = ("error", "skip")


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (Hydra passes them to constructors)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: a file (`path`, read with `fields`) or a data-source split."""

    name: str
    path: str | None = None
    split: str | None = None
    fields: Mapping[str, str] | None = None
    n_samples: int = 1
    limit: int | None = None
    # A file's unreadable records: "error" stops the evaluation, "skip" leaves them out
    # (counted in the load report and the evaluation's notes), at most `max_bad_records`.
    on_bad_record: str = "error"
    max_bad_records: int | float | None = None
    # Sampling temperature for this benchmark (null: the generator's); 0 = greedy decoding,
    # with n_samples 1, so that pass@1 is the greedy accuracy.
    temperature: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], position: int) -> Benchmark:
        cfg = dict(plain(cfg))
        where = f"eval.benchmarks.{cfg['name']}" if cfg.get("name") else f"eval.benchmarks[{position}]"
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known - {'name'})}")
        if not cfg.get("name"):
            raise ValueError(f"{where}: `name` is required")
        bench = cls(**cfg)
        if (bench.path is None) == (bench.split is None):
            raise ValueError(f"{where}: give exactly one of `path` (a file) or `split` (of the data source)")
        if bench.n_samples < 1:
            raise ValueError(f"{where}: n_samples={bench.n_samples} must be >= 1")
        if bench.limit is not None and bench.limit < 1:
            raise ValueError(f"{where}: limit={bench.limit} must be >= 1 or null")
        if bench.on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"{where}.on_bad_record={bench.on_bad_record!r}: choose 'error' or 'skip'")
        if bench.split is not None and (bench.on_bad_record != "error" or bench.max_bad_records is not None):
            raise ValueError(
                f"{where}: on_bad_record/max_bad_records apply to a file (`path`); a data-source "
                "split is read with data.on_bad_record and data.max_bad_records"
            )
        try:
            check_max_bad_records(bench.max_bad_records)
        except (TypeError, ValueError) as err:
            raise type(err)(str(err).replace("data.max_bad_records", f"{where}.max_bad_records")) from None
        if bench.temperature is not None:
            if bench.temperature < 0:
                raise ValueError(f"{where}: temperature={bench.temperature} must be >= 0 (0 = greedy) or null")
            if bench.temperature == 0 and bench.n_samples != 1:
                raise ValueError(
                    f"{where}: temperature=0 (greedy) with n_samples={bench.n_samples}: every sample "
                    "would be identical; set n_samples=1"
                )
        return bench

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)


def named_benchmarks(benchmarks: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Benchmark configs as a list. The config form is a mapping name -> settings, so that one
    benchmark is changed or dropped by name (`eval.benchmarks.toy_test.n_samples=16`,
    `eval.benchmarks.toy_test=null`); a list of settings with `name` keys is accepted too."""
    if benchmarks is None:
        return []
    if not isinstance(benchmarks, Mapping):
        return [dict(b) for b in benchmarks]
    out = []
    for name, settings in benchmarks.items():
        if settings is None:
            continue
        settings = dict(settings)
        if settings.get("name", name) != name:
            raise ValueError(f"eval.benchmarks.{name}: its `name` key says {settings['name']!r}; drop it (the key is the name)")
        out.append({**settings, "name": name})
    return out


def resolve_path(path: str, benchmarks_dir: Path | None) -> Path:
    """A relative `path` is read from `benchmarks_dir` (when given); an absolute one as it is."""
    p = Path(path)
    if not p.is_absolute() and benchmarks_dir is not None:
        p = benchmarks_dir / p
    return p


def load_problems(
    bench: Benchmark, benchmarks_dir: Path | None, data_source: Any = None
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """The benchmark's problems (prompt_id, prompt, answer[, answer_alternatives]), the first
    `limit` of them, and the load report (its `skipped` counts records left out as unreadable)."""
    if bench.path is not None:
        ds, load_report = _load_file(bench, benchmarks_dir)
    else:
        if data_source is None:
            raise ValueError(
                f"eval benchmark {bench.name!r} reads split {bench.split!r} of the data source, "
                "but evaluate() got no data_source"
            )
        ds = as_dataset(data_source.problems(bench.split))
        load_report = {"split": bench.split, "loaded": len(ds)}
        source_report = _source_split_report(data_source, bench.split)
        if source_report is not None:
            load_report["source"] = source_report
            load_report["skipped"] = source_report.get("skipped", 0)
        ds, load_report["repeated"] = drop_repeated_problems(
            ds, lambda row: f"split {bench.split} row {row}", bench.name
        )
    ds = ds.select_columns([c for c in PROBLEM_COLUMNS if c in ds.column_names])
    if bench.limit is not None and bench.limit < len(ds):
        ds = ds.select(range(bench.limit))
    load_report["evaluated"] = len(ds)
    return ds, load_report


def _load_file(bench: Benchmark, benchmarks_dir: Path | None) -> tuple[datasets.Dataset, dict[str, Any]]:
    try:
        ds, report = load_records(
            resolve_path(bench.path, benchmarks_dir), dict(bench.fields or DEFAULT_FIELDS),
            on_bad_record=bench.on_bad_record, source=bench.name,
            max_bad_records=bench.max_bad_records,
        )
    except TooManyBadRecords as err:
        key = f"eval.benchmarks.{bench.name}.max_bad_records"
        raise TooManyBadRecords(str(err).replace("data.max_bad_records", key)) from None
    ds, repeated = drop_repeated_problems(ds, report.location, bench.name)
    return ds, {**report.to_dict(), "repeated": repeated}


def drop_repeated_problems(
    ds: datasets.Dataset, where: Any, name: str
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Keep each problem once: a later record with the same prompt text (compared as the data
    joins compare it) and the same answer is left out and counted, whatever its id, so that a
    file that repeats a problem does not weigh it twice in pass@k; the same text with another
    answer stops the evaluation, naming both records. `where(row)` names a row's position."""
    first: dict[str, int] = {}
    keep: list[int] = []
    examples: list[str] = []
    prompts, answers = ds["prompt"], ds["answer"]
    for row, prompt in enumerate(prompts):
        seen = first.setdefault(normalize_prompt_text(prompt), row)
        if seen == row:
            keep.append(row)
            continue
        if answers[row] != answers[seen]:
            raise ValueError(
                f"eval.benchmarks.{name}: {where(row)} repeats the problem of {where(seen)} with "
                f"another answer ({answers[row]!r} vs {answers[seen]!r}); fix the file"
            )
        if len(examples) < 5:
            examples.append(f"{where(row)} = {where(seen)}")
    repeated = {"count": len(prompts) - len(keep), "examples": examples}
    if repeated["count"]:
        log.warning("eval %s: %d repeated problem(s) counted once: %s", name, repeated["count"], examples)
        ds = ds.select(keep)
    return ds, repeated


def _source_split_report(data_source: Any, split: str) -> dict[str, Any] | None:
    """The data source's load report of the file behind `split` (None: it keeps none, e.g. a
    generated world)."""
    reporter = getattr(data_source, "load_report", None)
    if reporter is None:
        return None
    return (reporter().get("sets") or {}).get(split)


def skipped_records(load_reports: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """What the benchmarks' loads left out as unreadable: {"skipped": total, "skipped_by_file":
    {file: {reason: {"count", "examples"}}}} (the shape of a data source's load report, which
    the run's final report lists), and one note per benchmark that lost records."""
    by_file: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for name, report in load_reports.items():
        file_report = report.get("source", report)
        if not file_report.get("skipped"):
            continue
        reasons = file_report["skipped_by_reason"]
        by_file[file_report["path"]] = reasons
        counts = "; ".join(
            f"{reason} {entry['count']} ({', '.join(entry['examples'][:3])})" for reason, entry in reasons.items()
        )
        notes.append(
            f"{name}: {file_report['skipped']} of {file_report['records_read']} records of "
            f"{file_report['path']} skipped as unreadable (on_bad_record=skip): {counts}"
        )
    total = sum(sum(entry["count"] for entry in reasons.values()) for reasons in by_file.values())
    return {"skipped": total, "skipped_by_file": by_file}, notes
