"""verify: the teacher pool (and the student's own samples, when a consumer reads them) marked
correct or incorrect."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import datasets

from reasonft.data.records import ANSWER_ALTERNATIVES
from reasonft.io import write_json, write_records
from reasonft.pipeline.components import build
from reasonft.pipeline.stage import RECORDS, Facts, KeyParts, Stage


class Verify(Stage):
    name = "verify"
    reads: ClassVar[tuple[str, ...]] = ("verify", "data")

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("generate",) if facts.self_samples else ()

    def configure(self, run: Any, facts: Facts) -> None:
        self.verifier = build("verify", self.config.verify)
        self.self_samples = facts.self_samples

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        config = {"data_version": key.data_version(), "self_samples": key.facts.self_samples}
        return config, {"generate": key.upstream("generate")} if key.facts.self_samples else {}

    def describe(self, facts: Facts) -> str:
        return "self-samples in the pool" if facts.self_samples else "teacher pool only"

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        parts = [inputs.run.source.teacher_pool("train")]
        if self.self_samples:
            parts.append(inputs.records_of("generate"))
        alternatives = any(ANSWER_ALTERNATIVES in p.column_names for p in parts)
        pool = (
            datasets.concatenate_datasets([common_columns(p, alternatives) for p in parts])
            if len(parts) > 1 else parts[0]
        )
        if not len(pool):
            raise RuntimeError("verify: the pool is empty (no teacher record, no self-sample)")
        verified, report = self.verifier(pool)
        write_records(verified, out_dir / RECORDS)
        write_json(report, out_dir / "report.json")
        return report


def common_columns(ds: datasets.Dataset, alternatives: bool = False) -> datasets.Dataset:
    """Teacher and self records share the base schema; keep the columns both can have
    (`answer_alternatives` too when either part has it)."""
    keep = ["prompt_id", "prompt", "answer", "response", "source", "steps", "sample_idx"]
    if alternatives:
        keep.append(ANSWER_ALTERNATIVES)
    ds = ds.select_columns([c for c in keep if c in ds.column_names])
    if "steps" not in ds.column_names:
        ds = ds.add_column("steps", [None] * len(ds))
    if "sample_idx" not in ds.column_names:
        ds = ds.add_column("sample_idx", [0] * len(ds))
    if alternatives and ANSWER_ALTERNATIVES not in ds.column_names:
        ds = ds.add_column(
            ANSWER_ALTERNATIVES, [[] for _ in range(len(ds))],
            feature=datasets.List(datasets.Value("string")),
        )
    return ds.select_columns(keep)
