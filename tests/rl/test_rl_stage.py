"""The rl stage in the pipeline: its plan, its start-up errors, its artifact key, and a killed
run that resumes from its last checkpoint."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from omegaconf import OmegaConf

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.pipeline.runner import Pipeline

# What the rl artifact reads, written here from the stage table (README), not from plan.py.
RL_READS = (
    "rl", "data", "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "strategy",
    "model.dtype", "model.attn_implementation", "model.config_overrides", "model.tokenizer",
    "model.build",  # through the base student's artifact (the starting checkpoint here)
)
RL_NOT_HASHED = ("rl.resume",)


def _compose(*overrides: str):
    return compose_config(overrides=["paths.output_dir=/tmp/reasonft-rl-run", *overrides])


def test_plan_starts_rl_from_the_trained_student_or_the_base_one(tmp_path):
    alone = Pipeline(_compose(f"paths.cache_dir={tmp_path}", "stages=[rl,evaluate,report]"))
    assert alone.plan.stages == ("base", "rl", "evaluate", "report")
    assert list(alone.keys()) == ["base", "rl", "evaluate:base", "evaluate:rl"]
    after = Pipeline(_compose(f"paths.cache_dir={tmp_path}", "experiment=toy_oxa_full_rl"))
    assert after.plan.stages[-4:] == ("train", "rl", "evaluate", "report")
    assert list(after.keys())[-4:] == ["rl", "evaluate:base", "evaluate:trained", "evaluate:rl"]
    # The starting checkpoint is part of the key.
    assert alone.key("rl") != after.key("rl")
    assert alone.spec("rl")[1].keys() == {"model", "base"}
    assert after.spec("rl")[1]["train"] == f"train/{after.key('train')}"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["rl=oxa_paper"], "rl.use_vllm=true"),
        (["rl=oxa_paper", "rl.use_vllm=false"], "rl.bf16=true"),
        (["rl.micro_batch_size=5"], "rl.micro_batch_size=5"),
        (["rl.kl_estimator=k2"], "rl.kl_estimator='k2'"),
        (["strategy=ddp", "trainer.devices=2"], "torchrun --nproc_per_node 2"),
        (["strategy=fsdp", "trainer.devices=2"], "use strategy=ddp"),
        (["trainer=gpu"], "trainer.accelerator=gpu"),
    ],
)
def test_start_up_stops_naming_the_key(tmp_path, overrides, names):
    import torch

    if torch.cuda.is_available():
        pytest.skip("these settings run on a GPU machine")
    with pytest.raises((ValueError, RuntimeError, ImportError)) as err:
        Pipeline(_compose(f"paths.cache_dir={tmp_path}", "stages=[rl,report]", *overrides))
    assert names in str(err.value)


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        out = []
        for k, v in node.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, node)]


def _perturbed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {"x": 1}
    return "perturbed" if value is None else None


def _set(config: dict, path: str, value: Any) -> None:
    *heads, leaf = path.split(".")
    node = config
    for h in heads:
        node = node[h]
    node[leaf] = value


@pytest.mark.slow
def test_rl_key_changes_with_each_key_it_reads_and_no_other(tmp_path):
    pipeline = Pipeline(_compose(f"paths.cache_dir={tmp_path}", "stages=[rl,report]"))
    original = pipeline.config
    key = pipeline.key("rl")
    checked = 0
    for path, value in _leaves(original):
        if path.startswith("hydra"):
            continue
        pipeline.config = copy.deepcopy(original)
        _set(pipeline.config, path, _perturbed(value))
        pipeline.__dict__.pop("model_identity", None)
        reads = any(path == p or path.startswith(p + ".") for p in RL_READS)
        reads = reads and not any(path == p or path.startswith(p + ".") for p in RL_NOT_HASHED)
        assert (pipeline.key("rl") != key) is reads, path
        checked += 1
    assert checked > 150
    # An interpolated leaf follows what it reads: `seed` reaches rl through rl.seed.
    assert Pipeline(_compose(f"paths.cache_dir={tmp_path}", "stages=[rl,report]", "seed=7")).key("rl") != key


def test_rl_key_follows_the_starting_checkpoint(tmp_path):
    first = Pipeline(_compose(f"paths.cache_dir={tmp_path}", "experiment=toy_oxa_full_rl"))
    other_train = Pipeline(_compose(
        f"paths.cache_dir={tmp_path}", "experiment=toy_oxa_full_rl", "train.optimizer.lr=0.002"
    ))
    assert other_train.key("train") != first.key("train")
    assert other_train.key("rl") != first.key("rl")
    other_base = Pipeline(_compose(f"paths.cache_dir={tmp_path}", "stages=[rl]", "model.build.steps=11"))
    assert other_base.key("rl") != Pipeline(_compose(f"paths.cache_dir={tmp_path}", "stages=[rl]")).key("rl")
    # where it runs and whether it resumes change nothing
    assert Pipeline(_compose(
        f"paths.cache_dir={tmp_path}", "experiment=toy_oxa_full_rl", "rl.resume=false", "logger=none"
    )).key("rl") == first.key("rl")


# A miniature toy world and GRPO run (seconds): the pipeline test's world, 3 RL steps.
TINY = [
    "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=32", "model.build.intermediate_size=64",
    "eval.benchmarks.toy_test.n_samples=2", "eval.benchmarks.toy_test.limit=4",
    "eval.benchmarks.toy_test_greedy.limit=4", "eval.ks=[1,2]", "eval.generator.max_new_tokens=24",
    "eval.heldout_entropy.limit=4", "verify.workers=1",
    "rl.prompts_per_step=2", "rl.samples_per_prompt=4", "rl.micro_batch_size=8",
    "rl.max_response_tokens=24", "rl.max_steps=3", "rl.save_every_n_steps=1",
    "rl.learning_rate=0.01", "rl.validation.every_n_steps=2",
    "rl.validation.evaluator.benchmarks.toy_validation.limit=3",
    "rl.validation.evaluator.benchmarks.toy_validation.n_samples=2", "rl.validation.evaluator.ks=[1,2]",
    "rl.validation.evaluator.generator.max_new_tokens=24",
    "callbacks.progress_bar=null",
]


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_killed_rl_stage_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    from reasonft.rl.callbacks import MetricsHistory

    def cfg(cache: str, *extra: str):
        return _compose(f"paths.cache_dir={tmp_path / cache}", f"paths.output_dir={tmp_path / cache}-run",
                        *TINY, *extra)

    # Uninterrupted: 3 steps.
    whole = Pipeline(cfg("whole", "stages=[rl,evaluate,report]"))
    whole.run()
    report = whole.built["rl"].meta()["summary"]
    assert (report["steps"], report["resumed_from"]) == (3, None)
    assert set(whole.results) == {"base", "rl"}  # evaluate reads the policy like any student

    # Killed during step 2, after step 1's checkpoint was written.
    original = MetricsHistory.on_step_end

    def die(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise Killed("killed at step 2")
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(MetricsHistory, "on_step_end", die)
    with pytest.raises(Killed):
        Pipeline(cfg("killed", "stages=[rl]")).run()
    monkeypatch.setattr(MetricsHistory, "on_step_end", original)
    again = Pipeline(cfg("killed", "stages=[rl]"))
    again.run()
    resumed = again.built["rl"].meta()["summary"]
    assert (resumed["steps"], resumed["resumed_from"]) == (3, "checkpoint-1")
    # The history holds each step once: step 1 from before the kill, 2 and 3 after it.
    rows = [json.loads(x) for x in (again.built["rl"].path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "val/pass@1" in r] == [0, 2, 3]
    # Resumed with the optimiser, scheduler and random state: the same policy as without the kill.
    a = safetensors.torch.load_file(str(whole.built["rl"].path / "model" / "model.safetensors"))
    b = safetensors.torch.load_file(str(again.built["rl"].path / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-5, name
    assert OmegaConf.select(again.cfg, "rl.resume") is True


@pytest.mark.slow
def test_the_policy_trains_in_float32_whatever_model_dtype(tmp_path, monkeypatch):
    """model.dtype=bfloat16 loads the student for sampling and evaluation; GRPO, like the train
    stage, keeps fp32 master weights (pure bf16 would round lr-sized updates away)."""
    import safetensors.torch
    import torch
    from transformers import TrainerCallback

    import reasonft.rl.stage as rl_stage

    seen: list[set[torch.dtype]] = []

    class ParamDtypes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.append({p.dtype for p in model.parameters()})

    original = rl_stage.run_grpo
    monkeypatch.setattr(rl_stage, "run_grpo", lambda *a, **k: original(*a, callbacks=[ParamDtypes()], **k))
    tiny = [*TINY, "rl.max_steps=1", "rl.validation.every_n_steps=0", "stages=[rl]"]
    run = Pipeline(_compose(f"paths.cache_dir={tmp_path}/cache", f"paths.output_dir={tmp_path}/run",
                            *tiny, "model.dtype=bfloat16"))
    run.run()
    assert seen == [{torch.float32}]
    saved = safetensors.torch.load_file(str(run.built["rl"].path / "model" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    plain = Pipeline(_compose(f"paths.cache_dir={tmp_path}/cache", *tiny))
    assert "policy_dtype" in run.spec("rl")[0] and "policy_dtype" not in plain.spec("rl")[0]
