"""model.build = PipelineStudent: another run's fine-tuned student as the base of this one (the
real student's format warm-up, model=smollm2_warm), built through the same artifact store."""

from __future__ import annotations

from pathlib import Path

import pytest

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.models.pipeline_student import PipelineStudent
from reasonft.pipeline.runner import Pipeline

TINY_SFT = [
    "experiment=toy_sft", "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=32", "model.build.intermediate_size=64", "model.build.shipped=false",
    "select.n=8", "train.per_step.ce=4", "train.micro_batch_size=2", "trainer.max_steps=2",
    "logger=none", "callbacks.progress_bar=null",
]


def test_overrides_are_checked():
    with pytest.raises(ValueError, match="model.build.overrides"):
        PipelineStudent("experiment=toy_sft")
    with pytest.raises(ValueError, match="drop stages="):
        PipelineStudent(["experiment=toy_sft", "stages=[evaluate]"])


@pytest.mark.slow
def test_a_run_builds_on_another_runs_trained_student(tmp_path: Path):
    cache = tmp_path / "cache"
    nested = PipelineStudent(TINY_SFT, cache_dir=str(cache))
    assert nested.folder_name().startswith("train-")
    listed = ",".join(f"'{o}'" for o in TINY_SFT)
    cfg = compose_config(overrides=[
        "model=smollm2_warm", f"model.build.overrides=[{listed}]", "stages=[evaluate]",
        "allow_toy_settings=true", "eval.benchmarks.toy_test=null",
        "eval.benchmarks.toy_test_greedy.limit=2", "eval.generator.max_new_tokens=8",
        "eval.heldout_entropy.limit=2", "data.source.n_test=6", "data.source.max_ops=2",
        f"paths.cache_dir={cache}", f"paths.output_dir={tmp_path}/run", "logger=none",
    ])
    pipeline = Pipeline(cfg)
    pipeline.run()
    first = Pipeline(nested.config())
    assert pipeline.artifacts[0].stage == "base"
    assert Path(pipeline.base_path).name == Path(first.trained_model_path()).name == "model"
    assert (Path(pipeline.base_path) / "config.json").exists()
