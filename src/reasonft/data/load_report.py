"""What a load read, kept and left out (and why): the load report."""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reasonft.data.record_checks import RecordError, TooManyBadRecords
from reasonft.data.record_files import POSITION_UNIT

_KEPT_REASONS = 10
_EXAMPLES_PER_REASON = 5


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

    def blank_line(self) -> None:
        self.blank_lines += 1

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

    def too_many(self, cap: float) -> TooManyBadRecords:
        """The error for more skips than `data.max_bad_records=cap` allows."""
        allowed = f"{cap}" if isinstance(cap, int) else f"{cap} of the {self.records_read} read"
        return TooManyBadRecords(
            f"{self.path}: {self.skipped} bad records skipped, more than "
            f"data.max_bad_records={allowed} allows ({self.skip_summary()}). Fix the file, or "
            "raise data.max_bad_records (null = no cap)."
        )
