"""score: PPL / GALP / LALP of every verified record under the frozen base student."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from reasonft.data.prompt_examples import write_prompt_examples
from reasonft.io import write_records
from reasonft.pipeline.components import build
from reasonft.pipeline.stage import PROMPT, PROMPTS, RECORDS, Facts, KeyParts, Stage


class Score(Stage):
    name = "score"
    reads: ClassVar[tuple[str, ...]] = ("score", *PROMPT)
    loads_model = True

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("base", "verify")

    def configure(self, run: Any, facts: Facts) -> None:
        """The configured scorer, widened to produce every score column a consumer reads."""
        scorer = build("score", self.config.score, prompt_format=run.prompt_format.as_dict())
        if not set(facts.score_columns) <= scorer.produces:
            scorer = scorer.with_columns(facts.score_columns)
        self.scorer = scorer

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        # What the (possibly widened) scorer produces, not what the consumers asked for.
        return {"produces": sorted(self.scorer.produces)}, {
            "verify": key.upstream("verify"), **key.base_model()
        }

    def on_every_rank(self, run: Any) -> bool:
        return run.predict_ranks is not None

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        run = inputs.run
        model, tok = run.base_model
        pool = inputs.records_of("verify")
        if self.scorer.condition_on_prompt:
            head = pool.select(range(min(3, len(pool))))
            write_prompt_examples(
                out_dir / PROMPTS, "score", head["prompt"], run.prompt_format, tok, head["response"]
            )
        if not self.on_every_rank(run):
            scored, report = self.scorer(pool, model, tok)
            report["processes"] = 1
        else:
            from reasonft.scoring.predict import score_with_trainer

            with run.shards(self.name) as shards:
                scored, report = score_with_trainer(
                    pool, model, tok, self.scorer, run.predict_ranks.trainer_kwargs(), shards
                )
        if not len(scored):
            raise RuntimeError(f"score: no record left after scoring; its report: {report}")
        write_records(scored, out_dir / RECORDS)
        return {"records": len(scored), **report}
