"""Raw records out of .jsonl, .json and .parquet files, each with its position in the file (line,
item or row number); an unreadable one comes as a RecordError in its place."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from reasonft.data.fields import FieldPath
from reasonft.data.record_checks import INVALID_JSON, RecordError

SUFFIXES = (".json", ".jsonl", ".parquet")
POSITION_UNIT = {".jsonl": "line", ".json": "item", ".parquet": "row"}


def raw_records(
    path: Path,
    paths: dict[str, FieldPath],
    defaults: Mapping[str, Any],
    on_blank_line: Callable[[], None],
) -> Iterator[tuple[int, int, Any]]:
    """(0-based index, position in the file (line / item / row number), raw record or a
    RecordError for an unreadable one); `on_blank_line` is called for each blank .jsonl line."""
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path, on_blank_line)
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


def _jsonl_records(
    path: Path, on_blank_line: Callable[[], None]
) -> Iterator[tuple[int, int, Any]]:
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
                on_blank_line()
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
