"""The pipeline over content-addressed artifacts, end to end on a miniature toy world."""

from __future__ import annotations

import pytest

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.pipeline.runner import Pipeline

TINY = [
    "data.source.n_train=24",
    "data.source.n_test=6",
    "data.source.max_ops=2",
    "model.build.steps=10",
    "model.build.n_pretrain=200",
    "model.build.vocab_size=400",
    "model.build.hidden_size=32",
    "model.build.intermediate_size=64",
    "generate.n=2",
    "generate.max_new_tokens=40",
    "verify.workers=1",
    "eval.benchmarks.toy_test.n_samples=2",
    "eval.benchmarks.toy_test.limit=4",
    "eval.benchmarks.toy_test_greedy.limit=4",
    "eval.ks=[1,2]",
    "eval.generator.max_new_tokens=40",
    "eval.heldout_entropy.limit=4",
    # The miniature student's PPLs fall outside the promote window, so the tiny selection holds
    # UL records only (its report: ppl_gaussian 1000 short of 1000); every step is all UL, and
    # the UL pool ends the epoch (the default run's `ce` would have no CE pool to count).
    "train.per_step.ce=0",
    "train.epoch_end=shortest",
    "train.micro_batch_size=2",
    "train.per_step.ul=4",
    "logger=none",
    "callbacks.progress_bar=null",
]


def _cfg(tmp_path, *extra: str):
    return compose_config(overrides=[
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}", *TINY, *extra,
    ])


def _built(pipeline: Pipeline) -> dict[str, bool]:
    return {f"{a.stage}:{a.key}": a.reused for a in pipeline.artifacts}


@pytest.mark.slow
def test_second_run_reuses_and_changed_selection_reruns_downstream_only(tmp_path):
    first = Pipeline(_cfg(tmp_path))
    first.run()
    stages = [a.stage for a in first.artifacts]
    assert stages == ["base", "generate", "verify", "score", "select", "train", "evaluate", "evaluate"]
    assert list(first.keys()) == [
        "base", "generate", "verify", "score", "select", "train", "evaluate:base", "evaluate:trained"
    ]
    assert list(first.keys().values()) == [a.key for a in first.artifacts]
    assert not any(_built(first).values())
    assert (tmp_path / "run" / "results.md").exists()
    assert set(first.results) == {"base", "trained"}

    again = Pipeline(_cfg(tmp_path))
    again.run()
    assert all(_built(again).values()), "an identical run must reuse every artifact"

    changed = Pipeline(_cfg(tmp_path, "select.promote.mu=2.5"))
    changed.run()
    reused = {a.stage: a.reused for a in changed.artifacts if a.stage != "evaluate"}
    assert reused == {
        "base": True, "generate": True, "verify": True, "score": True,
        "select": False, "train": False,
    }
    evaluations = [a.reused for a in changed.artifacts if a.stage == "evaluate"]
    assert evaluations == [True, False]  # the base student's evaluation is reused


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        Pipeline(_cfg(tmp_path, "stages=[base,traine]"))


def _key_of(tmp_path, monkeypatch, stage: str, *extra: str) -> str:
    # select=toy_random reads no self-samples: the verify pool is the teachers' alone.
    cfg = _cfg(tmp_path, "stages=[base,verify,select,train,evaluate,report]", "select=toy_random", *extra)
    return Pipeline(cfg).key(stage)


def test_code_versions_reach_the_artifact_keys(tmp_path, monkeypatch):
    """A new toy-student build procedure or toy-world generator must not reuse old artifacts,
    although the config is unchanged."""
    from reasonft.data.toy import ToyWorld
    from reasonft.models import toy

    base, verify = _key_of(tmp_path, monkeypatch, "base"), _key_of(tmp_path, monkeypatch, "verify")
    assert _key_of(tmp_path, monkeypatch, "base") == base
    monkeypatch.setattr(toy, "BUILD_VERSION", toy.BUILD_VERSION + 1)
    assert _key_of(tmp_path, monkeypatch, "base") != base
    assert _key_of(tmp_path, monkeypatch, "verify") == verify
    # With OXA's suppress side the pool holds the student's own samples: a new student is a new pool.
    oxa = _key_of(tmp_path, monkeypatch, "verify", "select=toy_oxa")
    monkeypatch.setattr(toy, "BUILD_VERSION", toy.BUILD_VERSION + 2)
    assert _key_of(tmp_path, monkeypatch, "verify", "select=toy_oxa") != oxa
    monkeypatch.setattr(ToyWorld, "content_version", ToyWorld.content_version + 1)
    assert _key_of(tmp_path, monkeypatch, "verify") != verify
