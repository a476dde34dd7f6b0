"""One raw record -> one row of the record schema, through the field mapping (`data.fields`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reasonft.data.fields import FieldError, FieldPath, normalize_answer, normalize_value
from reasonft.data.load_report import LoadReport
from reasonft.data.record_checks import (
    BAD_VALUE,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    RecordError,
    unencodable,
)
from reasonft.data.records import ANSWER_ALTERNATIVES


class RowConverter:
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
