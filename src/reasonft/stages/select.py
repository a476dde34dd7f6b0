"""select: the training set, each record with its `loss_type`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from reasonft.io import write_records
from reasonft.pipeline.components import build, required_scores
from reasonft.pipeline.stage import RECORDS, Demands, Facts, KeyParts, Stage
from reasonft.selection.base import EmptySelection
from reasonft.wandb_artifacts import log_selection


class Select(Stage):
    name = "select"
    reads: ClassVar[tuple[str, ...]] = ("select",)

    @cached_property
    def selector(self) -> Any:
        return build("select", self.config.select)

    def demands(self) -> Demands:
        return Demands(
            self_samples=self.selector.reads_self_samples,
            score_columns=required_scores(self.selector),
        )

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return (self.reads_from,)

    @property
    def reads_from(self) -> str:
        """The scored pool when the selector reads a score column, else the verified one."""
        return "score" if required_scores(self.selector) else "verify"

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {self.reads_from: key.upstream(self.reads_from)}

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        from reasonft.selection.report import write_report

        pool = inputs.records_of(self.reads_from)
        try:
            selection = self.selector(pool)
        except EmptySelection as empty:
            # The report of what every filter removed stays where the user looks.
            write_report(empty.selection, pool, inputs.run.out_dir / "select")
            raise
        write_records(selection.records, out_dir / RECORDS)
        write_report(selection, pool, out_dir)
        log_selection(inputs.run.wandb_run, selection.report, out_dir / RECORDS)
        return selection.report
