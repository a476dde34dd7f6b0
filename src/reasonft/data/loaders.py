"""Load records from JSON, JSON lines or Parquet files through a field mapping.

Every record either becomes a row of the record schema or is reported: with
`on_bad_record="error"` the first unreadable record stops the load with its file, position
(line for .jsonl, item for .json, row for .parquet) and field; with `"skip"` it is left out and
counted by reason (`invalid_json`, `not_an_object`, `missing_field:<column>`,
`bad_value:<column>`) with a few example positions, and a warning names them. `max_bad_records`
caps the skips: more than that many (an integer) or that share of the records read (a float in
[0, 1)) stops the load.

A mapped `prompt_id` must name one problem: two records with one id and different prompt texts
(compared after `fields.normalize_prompt_text`) stop the load, naming both positions.

The parts: record_files.py reads the files, record_mapping.py maps one raw record to a row,
record_checks.py says what is bad and how much of it is tolerated, load_report.py counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import datasets

from reasonft.data.fields import REQUIRED_COLUMNS, parse_mapping
from reasonft.data.load_report import LoadReport
from reasonft.data.record_checks import (
    MaxBadRecords,
    PromptIdCheck,
    RecordError,
    check_max_bad_records,
    over_cap,
)
from reasonft.data.record_files import POSITION_UNIT, SUFFIXES, raw_records
from reasonft.data.record_mapping import RowConverter
from reasonft.data.records import ANSWER_ALTERNATIVES

log = logging.getLogger(__name__)

OnBadRecord = Literal["error", "skip"]
FEATURES = {
    "prompt_id": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "response": datasets.Value("string"),
    "source": datasets.Value("string"),
    "steps": datasets.List(datasets.Value("string")),
    "sample_idx": datasets.Value("int64"),
}
COLUMN_ORDER = tuple(FEATURES)
_CHUNK_ROWS = 10_000


def load_records(
    path: str | Path,
    fields: Mapping[str, str],
    on_bad_record: OnBadRecord = "error",
    source: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    strip_suffix: str | None = None,
    max_bad_records: MaxBadRecords = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Read `path` (.json array, .jsonl, .parquet) into record-schema rows.

    Args:
        fields: record column -> path in the source record (`prompt` and `answer` required).
        on_bad_record: "error" raises on the first unreadable record, "skip" counts and skips it.
        source: the `source` of every record (e.g. a teacher name) where no field gives one.
        defaults: column -> value used when the column is unmapped or its field is absent.
        strip_suffix: removed from the end of each prompt that has it (data shipped with the
            prompt suffix already appended), so that `prompt` is the problem text alone.
        max_bad_records: with "skip", the most records that may be skipped: a count, or a
            share of the records read (float in [0, 1)); None = no cap. More stops the load.

    `prompt_id` comes from its field when mapped, else it is "<file stem>-<index>" with the
    0-based index of the record in the file. A mapped (or defaulted) id shared by two
    different prompt texts raises `PromptIdConflict`.
    """
    path = Path(path)
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record={on_bad_record!r}: choose 'error' or 'skip'")
    max_bad_records = check_max_bad_records(max_bad_records)
    if path.suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {list(SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    paths = parse_mapping(fields)
    defaults = dict(defaults or {})
    if source is not None:
        defaults.setdefault("source", source)
    missing = [c for c in REQUIRED_COLUMNS if c not in paths]
    if missing:
        raise ValueError(f"{path}: fields must map {missing} (given: {dict(fields)})")
    bad_defaults = [c for c in defaults if c not in FEATURES or c in REQUIRED_COLUMNS]
    if bad_defaults:
        raise ValueError(
            f"defaults: cannot set {bad_defaults}; allowed: {sorted(set(FEATURES) - set(REQUIRED_COLUMNS))}"
        )

    report = LoadReport(path=str(path), fields={c: p.text for c, p in paths.items()})
    columns = [c for c in COLUMN_ORDER if c in paths or c in defaults or c == "prompt_id"]
    converter = RowConverter(path, paths, defaults, strip_suffix, report)
    unit = POSITION_UNIT[path.suffix]
    check_ids = PromptIdCheck(path) if "prompt_id" in paths or "prompt_id" in defaults else None
    chunks: list[datasets.Dataset] = []
    rows: dict[str, list[Any]] = {c: [] for c in columns}
    alternatives: list[list[str]] = []
    features = datasets.Features({c: FEATURES[c] for c in columns})

    # closing(): an error mid-file closes the reader (and its progress bar) at once.
    with closing(raw_records(path, paths, defaults, report.blank_line)) as records:
        for index, position, raw in records:
            where = f"{unit} {position}"
            report.records_read += 1
            try:
                row = converter(index, where, raw)
            except RecordError as error:
                if on_bad_record == "error":
                    raise
                report.skip(error)
                if isinstance(max_bad_records, int) and report.skipped > max_bad_records:
                    raise report.too_many(max_bad_records) from None
                continue
            if check_ids is not None:
                check_ids(row["prompt_id"], row["prompt"], where)
            report.positions.append(position)
            for c in columns:
                rows[c].append(row[c])
            alternatives.append(row.get(ANSWER_ALTERNATIVES, []))
            report.loaded += 1
            if len(rows["prompt"]) >= _CHUNK_ROWS:
                chunks.append(datasets.Dataset.from_dict(rows, features=features))
                rows = {c: [] for c in columns}
    if rows["prompt"] or not chunks:
        chunks.append(datasets.Dataset.from_dict(rows, features=features))

    if report.loaded == 0:
        reasons = "; ".join(report.skip_reasons[:3]) or "the file holds no records"
        raise ValueError(
            f"{path}: no record could be loaded ({report.records_read} read): {reasons}"
        )
    if over_cap(max_bad_records, report.skipped, report.records_read):
        raise report.too_many(max_bad_records)
    if report.skipped:
        log.warning(
            "data: %s: %s (data.on_bad_record=skip)", path.name, report.skip_summary()
        )
    dataset = chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)
    if report.answers_with_alternatives:
        dataset = dataset.add_column(ANSWER_ALTERNATIVES, alternatives, feature=datasets.List(datasets.Value("string")))
    return dataset, report
