"""generate: the base student's own samples on the training prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from reasonft.data.prompt_examples import write_prompt_examples
from reasonft.generation.hf import HFGenerator
from reasonft.io import write_records
from reasonft.pipeline.components import build
from reasonft.pipeline.stage import PROMPTS, RECORDS, Facts, KeyParts, Stage


class Generate(Stage):
    name = "generate"
    reads: ClassVar[tuple[str, ...]] = ("generate", "data")
    loads_model = True

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("base",)

    def configure(self, run: Any, facts: Facts) -> None:
        self.generator = build("generate", self.config.generate)

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"data_version": key.data_version()}, key.base_model()

    def on_every_rank(self, run: Any) -> bool:
        # Only the HF generator samples with the model it is handed; vLLM runs its own engine.
        return isinstance(self.generator, HFGenerator) and run.predict_ranks is not None

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        run = inputs.run
        model, tok = run.base_model
        problems = run.source.problems("train")
        write_prompt_examples(
            out_dir / PROMPTS, "generate", problems["prompt"][:3], run.prompt_format, tok
        )
        if not self.on_every_rank(run):
            samples = self.generator.generate(problems, model, tok, prompt_format=run.prompt_format)
            world = 1
        else:
            from reasonft.generation.predict import generate_with_trainer

            with run.shards(self.name) as shards:
                samples, _ = generate_with_trainer(
                    problems, model, tok, self.generator, run.predict_ranks.trainer_kwargs(),
                    shards, prompt_format=run.prompt_format,
                )
            world = run.predict_ranks.world_size
        if not len(samples):
            raise RuntimeError("generate: no sample was produced (no training problem?)")
        write_records(samples, out_dir / RECORDS)
        return {"samples": len(samples), "problems": len(problems), "processes": world}
