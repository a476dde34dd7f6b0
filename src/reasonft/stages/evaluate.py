"""evaluate: Pass@k, greedy accuracy and entropy of the base student, and of the fine-tuned and
RL students when the run trains them; one artifact per student."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from reasonft.data.prompt_examples import write_prompt_examples
from reasonft.pipeline.artifacts import Artifact
from reasonft.pipeline.components import build
from reasonft.pipeline.stage import PROMPTS, Facts, KeyParts, Stage

# The student each tag evaluates, after `base`: the stage that builds it.
TRAINED = {"trained": "train", "rl": "rl"}


class Evaluate(Stage):
    name = "evaluate"
    reads: ClassVar[tuple[str, ...]] = ("eval", "data")
    loads_model = True
    rank_zero_only = True

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("base", *(s for s in ("train", "rl") if facts.asked(s)))

    def tags(self, facts: Facts) -> tuple[str, ...]:
        return ("base", *(tag for tag, stage in TRAINED.items() if facts.asked(stage)))

    def configure(self, run: Any, facts: Facts) -> None:
        self.evaluator = build("eval", self.config.eval)

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        config = {"data_version": key.data_version()}
        if tag in TRAINED:
            stage = TRAINED[tag]
            return config, {stage: key.upstream(stage), "load": key.load_args()}
        return config, key.base_model()

    def describe(self, facts: Facts) -> str:
        return " + ".join(["evaluate base", *(tag for tag in self.tags(facts)[1:])])

    def result(self, tag: str, artifact: Artifact) -> dict[str, Any]:
        return artifact.meta()["summary"]

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        run, tag = inputs.run, inputs.tag
        path = inputs.model_path(TRAINED[tag]) if tag in TRAINED else run.base_path
        model, tok = run.load_model(path)
        model.eval()
        first = self.evaluator.benchmarks[0]
        problems = self.evaluator.problems(first, run.source)[0]["prompt"][:3]
        write_prompt_examples(
            out_dir / PROMPTS, f"evaluate {tag} ({first.name})", problems, run.prompt_format, tok
        )
        return self.evaluator.evaluate(
            model, tok, out_dir, data_source=run.source, tag=tag, prompt_format=run.prompt_format,
        )
