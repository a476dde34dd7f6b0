"""What makes a record bad, and how many bad ones a load tolerates.

A bad record is a `RecordError` naming file, position and field, counted under a reason key
(`invalid_json`, `not_an_object`, `missing_field:<column>`, `bad_value:<column>`);
`data.max_bad_records` caps the skips (a count, or a share of the records read). A mapped
`prompt_id` must name one problem: two records with one id and different prompt texts
(compared after `fields.normalize_prompt_text`) are a `PromptIdConflict`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from reasonft.data.fields import normalize_prompt_text

MaxBadRecords = int | float | None

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


def over_cap(cap: MaxBadRecords, skipped: int, read: int) -> bool:
    if cap is None:
        return False
    if isinstance(cap, int):
        return skipped > cap
    return skipped > cap * read


class PromptIdCheck:
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
