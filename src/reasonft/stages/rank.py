"""rank: which teacher's correct responses suit this student (METHODS §2b); its artifact is the
ranking (JSON, Markdown, a bar plot), shown in the final report."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from reasonft.pipeline.components import build, required_scores
from reasonft.pipeline.stage import Demands, Facts, KeyParts, Stage


class RankTeachers(Stage):
    name = "rank"
    reads: ClassVar[tuple[str, ...]] = ("rank",)

    @cached_property
    def ranker(self) -> Any:
        return build("rank", self.config.rank)

    def demands(self) -> Demands:
        return Demands(
            self_samples=self.ranker.reads_self_samples,
            score_columns=required_scores(self.ranker),
        )

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("score",)

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {"score": key.upstream("score")}

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        ranking = self.ranker(inputs.records_of("score"))
        ranking.write(out_dir)
        return {"teacher_ranking": ranking.table, **ranking.report}
