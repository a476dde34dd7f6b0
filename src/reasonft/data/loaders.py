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
"""

from __future__ import annotations

import hashlib
import json
import logging
from array import array
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from reasonft.data.fields import (
    REQUIRED_COLUMNS,
    FieldError,
    FieldPath,
    normalize_answer,
    normalize_prompt_text,
    normalize_value,
    parse_mapping,
)
from reasonft.data.records import ANSWER_ALTERNATIVES

log = logging.getLogger(__name__)

OnBadRecord = Literal["error", "skip"]
MaxBadRecords = int | float | None
SUFFIXES = (".json", ".jsonl", ".parquet")
POSITION_UNIT = {".jsonl": "line", ".json": "item", ".parquet": "row"}
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
_KEPT_REASONS = 10
_EXAMPLES_PER_REASON = 5

# Kinds of bad record (the reason keys of the load report add `:<column>` to the last two).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_VALUE = "bad_value"


class RecordError(ValueError):
    """A record that cannot be read; the message names file, position and field."""

    def __init__(
        self,
        path: Path,
        where: str,
        reason: str,
        field: str | None = None,
        kind: str = BAD_VALUE,
        column: str | None = None,
    ) -> None:
        self.path, self.where, self.reason, self.field = path, where, reason, field
        self.kind, self.column = kind, column
        named = f" field {field}:" if field else ""
        super().__init__(f"{path}: {where}:{named} {reason}")

    @property
    def reason_key(self) -> str:
        """The key this record is counted under in the load report."""
        return f"{self.kind}:{self.column}" if self.column else self.kind


class TooManyBadRecords(ValueError):
    """More records were skipped than `data.max_bad_records` allows."""


class PromptIdConflict(ValueError):
    """One prompt_id names two different prompt texts."""


@dataclass
class LoadReport:
    """What a load read, kept and left out (and why)."""

    path: str
    fields: dict[str, str]
    records_read: int = 0
    loaded: int = 0
    skipped: int = 0
    # reason key -> {"count": n, "examples": first positions ("line 4", "row 17", ...)}
    skipped_by_reason: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The first full messages, in file order.
    skip_reasons: list[str] = field(default_factory=list)
    blank_lines: int = 0
    # List answers with several distinct forms: the first is `answer`, the others are kept in
    # `answer_alternatives` (see fields.normalize_answer).
    answers_with_alternatives: int = 0
    # Prompts that did not end with `strip_suffix` and were kept whole.
    suffix_missing: int = 0
    # Position in the file (line / item / row number) of every loaded row, for messages.
    positions: array = field(default_factory=lambda: array("q"), repr=False)

    def skip(self, error: RecordError) -> None:
        self.skipped += 1
        entry = self.skipped_by_reason.setdefault(error.reason_key, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < _EXAMPLES_PER_REASON:
            entry["examples"].append(error.where)
        if len(self.skip_reasons) < _KEPT_REASONS:
            self.skip_reasons.append(str(error))

    def location(self, row: int) -> str:
        """"<file>:<unit> <position>" of loaded row `row` (e.g. "pool.jsonl:line 7")."""
        unit = POSITION_UNIT.get(Path(self.path).suffix, "record")
        return f"{self.path}:{unit} {self.positions[row]}"

    def skip_summary(self) -> str:
        """One line: "4 of 10 records skipped: invalid_json 1 (line 2), ..." ("" when none)."""
        if not self.skipped:
            return ""
        parts = [
            f"{reason} {entry['count']} ({', '.join(entry['examples'][:3])})"
            for reason, entry in self.skipped_by_reason.items()
        ]
        return f"{self.skipped} of {self.records_read} records skipped: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["positions"]
        return out


def check_max_bad_records(value: MaxBadRecords) -> MaxBadRecords:
    """None, an integer count >= 0, or a float share in [0, 1); the error names the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"data.max_bad_records={value!r}: give null (no cap), a count (e.g. 100) or a share "
            "of the records read (e.g. 0.01)"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"data.max_bad_records={value}: a count must be >= 0")
        return value
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"data.max_bad_records={value}: a share must lie in [0, 1); write an integer for a count"
        )
    return value


def _over_cap(cap: MaxBadRecords, skipped: int, read: int) -> bool:
    if cap is None:
        return False
    if isinstance(cap, int):
        return skipped > cap
    return skipped > cap * read


class _PromptIdCheck:
    """Remembers, per prompt_id, a digest of its normalised prompt text and where it came first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: dict[str, tuple[bytes, str, str]] = {}

    def __call__(self, prompt_id: str, prompt: str, where: str) -> None:
        normalised = normalize_prompt_text(prompt)
        digest = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
        seen = self.first.setdefault(prompt_id, (digest, where, prompt))
        if seen[0] != digest:
            raise PromptIdConflict(
                f"prompt_id {prompt_id!r} names two different prompts: {self.path}:{seen[1]} "
                f"({_short(seen[2])}) and {self.path}:{where} ({_short(prompt)}), compared after "
                "normalize_prompt_text. Give every problem its own id (fix the file, or map "
                "another field as data.source.<set>.fields.prompt_id, or unmap it to number the "
                "records by position)."
            )


def unencodable(value: Any) -> str | None:
    """Why a text value cannot be stored in the columnar store (Arrow strings are UTF-8), or
    None. JSON can carry a lone surrogate (an escaped "\\ud800") that Python reads into a string
    and no UTF-8 encoder accepts."""
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(text[error.start])
            return (
                f"text cannot be stored as UTF-8: lone surrogate U+{code:04X} at character "
                f"{error.start}"
            )
    return None


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


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
    converter = _RowConverter(path, paths, defaults, strip_suffix, report)
    unit = POSITION_UNIT[path.suffix]
    check_ids = _PromptIdCheck(path) if "prompt_id" in paths or "prompt_id" in defaults else None
    chunks: list[datasets.Dataset] = []
    rows: dict[str, list[Any]] = {c: [] for c in columns}
    alternatives: list[list[str]] = []
    features = datasets.Features({c: FEATURES[c] for c in columns})

    # closing(): an error mid-file closes the reader (and its progress bar) at once.
    with closing(_raw_records(path, paths, defaults, report)) as raw_records:
        for index, position, raw in raw_records:
            where = f"{unit} {position}"
            report.records_read += 1
            try:
                row = converter(index, where, raw)
            except RecordError as error:
                if on_bad_record == "error":
                    raise
                report.skip(error)
                if isinstance(max_bad_records, int) and report.skipped > max_bad_records:
                    raise _too_many(report, max_bad_records) from None
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
    if _over_cap(max_bad_records, report.skipped, report.records_read):
        raise _too_many(report, max_bad_records)
    if report.skipped:
        log.warning(
            "data: %s: %s (data.on_bad_record=skip)", path.name, report.skip_summary()
        )
    dataset = chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)
    if report.answers_with_alternatives:
        dataset = dataset.add_column(ANSWER_ALTERNATIVES, alternatives, feature=datasets.List(datasets.Value("string")))
    return dataset, report


def _too_many(report: LoadReport, cap: float) -> TooManyBadRecords:
    allowed = f"{cap}" if isinstance(cap, int) else f"{cap} of the {report.records_read} read"
    return TooManyBadRecords(
        f"{report.path}: {report.skipped} bad records skipped, more than "
        f"data.max_bad_records={allowed} allows ({report.skip_summary()}). Fix the file, or "
        "raise data.max_bad_records (null = no cap)."
    )


class _RowConverter:
    """One raw record -> one row dict, or a RecordError naming position and field."""

    def __init__(
        self,
        path: Path,
        paths: dict[str, FieldPath],
        defaults: dict[str, Any],
        strip_suffix: str | None,
        report: LoadReport,
    ) -> None:
        self.path, self.paths = path, paths
        self.strip_suffix, self.report = strip_suffix or None, report
        self.defaults: dict[str, Any] = {}
        for column, value in defaults.items():
            try:
                self.defaults[column] = normalize_value(column, value)
            except FieldError as error:
                raise ValueError(f"defaults.{column}={value!r}: {error}") from None

    def __call__(self, index: int, where: str, raw: Any) -> dict[str, Any]:
        if isinstance(raw, RecordError):
            raise raw
        if not isinstance(raw, Mapping):
            raise RecordError(
                self.path, where, f"expected an object, got a {type(raw).__name__}",
                kind=NOT_AN_OBJECT,
            )
        row: dict[str, Any] = {}
        has_alternatives = False
        for column, field_path in self.paths.items():
            try:
                value = field_path.resolve(raw)
            except FieldError as error:
                if column not in self.defaults:
                    raise RecordError(
                        self.path, where, str(error), self._name(column), MISSING_FIELD, column
                    ) from None
                value = self.defaults[column]
            try:
                if column == "answer":
                    answer = normalize_answer(value)
                    has_alternatives = bool(answer.alternatives)
                    row[column] = answer.text
                    row[ANSWER_ALTERNATIVES] = list(answer.alternatives)
                else:
                    row[column] = normalize_value(column, value)
            except FieldError as error:
                raise RecordError(
                    self.path, where, str(error), self._name(column), BAD_VALUE, column
                ) from None
            problem = unencodable(row[column])
            if problem:
                raise RecordError(self.path, where, problem, self._name(column), BAD_VALUE, column)
        for column, value in self.defaults.items():
            row.setdefault(column, value)
        row.setdefault("prompt_id", f"{self.path.stem}-{index}")
        if self.strip_suffix:
            if row["prompt"].endswith(self.strip_suffix):
                row["prompt"] = row["prompt"][: -len(self.strip_suffix)]
                if not row["prompt"].strip():
                    raise RecordError(
                        self.path, where, "prompt is only the suffix", self._name("prompt"),
                        BAD_VALUE, "prompt",
                    )
            else:
                self.report.suffix_missing += 1
        self.report.answers_with_alternatives += has_alternatives
        return row

    def _name(self, column: str) -> str:
        path = self.paths[column].text
        return f"'{column}'" if path == column else f"'{column}' (from '{path}')"


# -- reading raw records -------------------------------------------------------------------------


def _raw_records(
    path: Path, paths: dict[str, FieldPath], defaults: Mapping[str, Any], report: LoadReport
) -> Iterator[tuple[int, int, Any]]:
    """(0-based index, position in the file (line / item / row number), raw record or a
    RecordError for an unreadable one)."""
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path, report)
    elif path.suffix == ".json":
        yield from _json_records(path)
    else:
        yield from _parquet_records(path, paths, defaults)


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )


def _jsonl_records(path: Path, report: LoadReport) -> Iterator[tuple[int, int, Any]]:
    total = path.stat().st_size
    index = 0
    with path.open("rb") as handle, _progress(f"load {path.name} (bytes)") as bar:
        task = bar.add_task("load", total=total)
        unreported = 0
        for line_no, line in enumerate(handle, start=1):
            unreported += len(line)
            if unreported >= 1 << 20:
                bar.advance(task, unreported)
                unreported = 0
            where = f"line {line_no}"
            if not line.strip():
                report.blank_lines += 1
                continue
            try:
                raw: Any = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raw = RecordError(
                    path, where, f"not valid JSON ({_json_reason(error)})", kind=INVALID_JSON
                )
            yield index, line_no, raw
            index += 1
        bar.update(task, completed=total)


def _json_records(path: Path) -> Iterator[tuple[int, int, Any]]:
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        # A broken array cannot be split into records, so this is an error even with "skip".
        raise RecordError(
            path, f"line {error.lineno}", f"not valid JSON ({_json_reason(error)})",
            kind=INVALID_JSON,
        ) from None
    if not isinstance(data, list):
        raise TypeError(
            f"{path}: expected a JSON array of records, got a {type(data).__name__} (use .jsonl for JSON lines)"
        )
    with _progress(f"load {path.name}") as bar:
        task = bar.add_task("load", total=len(data))
        for index, raw in enumerate(data):
            yield index, index, raw
            if index % 1000 == 999:
                bar.advance(task, 1000)
        bar.update(task, completed=len(data))


def _parquet_records(
    path: Path, paths: dict[str, FieldPath], defaults: Mapping[str, Any]
) -> Iterator[tuple[int, int, Any]]:
    """Rows as dicts, reading only the top-level columns the mapping uses."""
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    # A column the file lacks altogether is a mapping error, not a bad row (unless defaulted).
    needed = {
        c: p.text for c, p in paths.items() if str(p.parts[0]) not in names and c not in defaults
    }
    if needed:
        raise ValueError(
            f"{path}: fields {needed} name column(s) the file does not have; its columns: {names}"
        )
    tops = sorted({str(p.parts[0]) for p in paths.values()} & set(names))
    total = parquet.metadata.num_rows
    index = 0
    with _progress(f"load {path.name}") as bar:
        task = bar.add_task("load", total=total)
        for batch in parquet.iter_batches(batch_size=4096, columns=tops):
            for raw in batch.to_pylist():
                yield index, index, raw
                index += 1
            bar.advance(task, batch.num_rows)


def _json_reason(error: json.JSONDecodeError | UnicodeDecodeError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at column {error.colno}"
    return f"not UTF-8: {error.reason}"
