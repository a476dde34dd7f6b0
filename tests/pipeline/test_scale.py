"""Scale configuration: strategies (FSDP, DeepSpeed), Slurm/local launchers, Optuna and W&B sweeps.

This file is also a Hydra app (`python tests/pipeline/test_scale.py -m hparams_search=oxa_optuna ...`):
its task function stands in for the pipeline so the Optuna sweep, its failed trials and their
W&B runs can be tested in seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies import FSDPStrategy

from reasonft.config import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[2]


def compose_cfg(overrides: list[str], hydra_config: bool = False) -> DictConfig:

    import reasonft  # noqa: F401  (config resolvers)

    return compose_config(overrides=overrides, return_hydra_config=hydra_config)


# ---- strategies ---------------------------------------------------------------------------


def test_fsdp_config_wraps_and_checkpoints_each_decoder_layer(tiny_model: Any) -> None:
    from hydra.utils import instantiate
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    from reasonft.training.strategies import LayerWrappedFSDPStrategy, require_layers

    cfg = compose_cfg(["strategy=fsdp", "strategy.activation_checkpointing=true"])
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, LayerWrappedFSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    wrapped = policy._run_policy(tiny_model, set(), {})
    layers = [m for m in tiny_model.modules() if isinstance(m, Qwen2DecoderLayer)]
    assert set(wrapped) == set(layers) and len(layers) == 2
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert set(checkpointed._run_policy(tiny_model, set(), {})) == set(layers)
    assert strategy.mixed_precision is None  # taken from trainer.precision by Lightning
    assert require_layers(tiny_model, strategy.layer_classes) == 2

    plain = instantiate(compose_cfg(["strategy=fsdp"]).strategy)
    assert plain._activation_checkpointing_kwargs == {}


def test_fsdp_layer_classes_errors_name_the_key(tiny_model: Any) -> None:
    from reasonft.training.strategies import (
        check_strategy,
        fsdp_strategy,
        module_classes,
        require_layers,
    )

    with pytest.raises(ValueError, match="strategy.layer_classes.*cannot import"):
        fsdp_strategy(["transformers.models.no_such_model.modeling.Layer"])
    with pytest.raises(ValueError, match="import path"):
        module_classes(["Qwen2DecoderLayer"])
    with pytest.raises(ValueError, match="non-empty list"):
        module_classes([])
    with pytest.raises(TypeError, match="not a torch.nn.Module class"):
        check_strategy(
            {
                "_target_": "x",
                "layer_classes": ["transformers.models.qwen2.modeling_qwen2.Qwen2Config"],
            }
        )
    llama = module_classes(["transformers.models.llama.modeling_llama.LlamaDecoderLayer"])
    with pytest.raises(ValueError, match="Qwen2DecoderLayer"):
        require_layers(tiny_model, llama)


@pytest.mark.parametrize(("option", "stage"), [("deepspeed_z2", 2), ("deepspeed_z3", 3)])
def test_deepspeed_configs_need_the_extra_at_startup(
    option: str, stage: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from reasonft.training import strategies

    cfg = compose_cfg([f"strategy={option}"])
    assert cfg.strategy.stage == stage
    monkeypatch.setattr(strategies, "deepspeed_available", lambda: False)
    with pytest.raises(ImportError, match=re.escape("pip install -e .[deepspeed]")):
        strategies.check_strategy(cfg.strategy)
    # What train.build_strategy meets if the start-up check was skipped (Hydra wraps the error).
    with pytest.raises(InstantiationException, match=re.escape("pip install -e .[deepspeed]")):
        instantiate(cfg.strategy)


@pytest.mark.skipif(
    not __import__("reasonft.training.strategies", fromlist=["x"]).deepspeed_available(),
    reason="deepspeed is not installed (pip install -e .[deepspeed])",
)
def test_deepspeed_configs_build_the_strategy() -> None:
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import DeepSpeedStrategy

    for option, stage in (("deepspeed_z2", 2), ("deepspeed_z3", 3)):
        strategy = instantiate(compose_cfg([f"strategy={option}"]).strategy)
        assert isinstance(strategy, DeepSpeedStrategy)
        assert strategy.config["zero_optimization"]["stage"] == stage


def test_deepspeed_stage_options_are_checked() -> None:
    from reasonft.training.strategies import deepspeed_strategy

    with pytest.raises(ValueError, match="stage must be one of"):
        deepspeed_strategy(stage=4)
    with pytest.raises(ValueError, match="stage 3"):
        deepspeed_strategy(stage=2, offload_parameters=True)


@pytest.mark.gpu
def test_fsdp_trains_on_one_gpu(tmp_path: Path, tiny_tokenizer: Any, tiny_model: Any) -> None:
    import copy

    from reasonft.training.train import train_student

    cfg = compose_cfg(
        [
            "strategy=fsdp",
            "trainer=gpu",
            "trainer.devices=1",
            "trainer.max_steps=2",
            "logger=none",
            "callbacks.progress_bar=null",
            f"paths.output_dir={tmp_path}",
            "train.per_step.ce=2",
            "train.per_step.ul=0",
            "train.max_length=64",
            "data.prompt_suffix=",
            "data.chat_template=false",
        ]
    )
    records = [
        {"prompt_id": f"g{i}", "prompt": f"{i}+1?", "response": f"{i + 1}"} for i in range(4)
    ]
    model_dir = train_student(
        cfg, records, copy.deepcopy(tiny_model), tiny_tokenizer, tmp_path / "out"
    )
    assert (Path(model_dir) / "config.json").exists()
    # the saved weights are the gathered, unflattened parameters, and they were trained
    from transformers import AutoModelForCausalLM

    saved = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    initial = dict(tiny_model.named_parameters())
    assert saved.keys() == initial.keys()
    assert all(saved[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(saved[k].cpu(), initial[k].cpu()) for k in initial)


class _FakeFSDP(FSDPStrategy):
    """An FSDPStrategy that returns a prepared 'gathered' state dict (no process group)."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def lightning_module_state_dict(self) -> dict:
        return self._state


class _FakeTrainer:
    def __init__(self, strategy, rank_zero: bool) -> None:
        self.strategy, self.is_global_zero = strategy, rank_zero


def test_full_state_dict_strips_the_module_prefix_on_rank_zero_only(tiny_model: Any) -> None:
    from pytorch_lightning.strategies import SingleDeviceStrategy

    from reasonft.training.strategies import full_state_dict

    weights = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    gathered = {**{f"model.{k}": v for k, v in weights.items()}, "other.buffer": torch.zeros(1)}
    on_zero = full_state_dict(_FakeTrainer(_FakeFSDP(gathered), True), tiny_model)
    assert on_zero.keys() == weights.keys()
    assert all(torch.equal(on_zero[k], weights[k]) for k in weights)
    assert full_state_dict(_FakeTrainer(_FakeFSDP(gathered), False), tiny_model) is None
    plain = SingleDeviceStrategy(device=torch.device("cpu"))
    assert full_state_dict(_FakeTrainer(plain, True), tiny_model) is None  # nothing sharded


# ---- launchers ------------------------------------------------------------------------------


def test_slurm_launcher_ties_tasks_and_nodes_to_the_trainer() -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg(
        [
            "hydra/launcher=slurm",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
        ],
        hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.tasks_per_node == cfg.trainer.devices == 4
    assert launcher.gpus_per_node == 4
    assert launcher.nodes == cfg.trainer.num_nodes == 2
    assert launcher.account is None and launcher.partition == "gpu"
    built = instantiate(launcher)
    assert built.params["tasks_per_node"] == 4 and built.params["nodes"] == 2
    assert (
        built.params["timeout_min"] > 0
        and built.params["cpus_per_task"] > 0
        and built.params["mem_gb"] > 0
    )


def test_local_launcher_composes() -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg(["hydra/launcher=local"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
    built = instantiate(cfg.hydra.launcher)
    assert (
        built.params["tasks_per_node"] == 1 and built.params["gpus_per_node"] == cfg.trainer.devices
    )


def _with_hydra(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return HydraConfig.instance()


def test_multirun_with_script_launched_ranks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from reasonft.sweep import check_launch

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    instance = None
    try:
        cfg = compose_cfg(
            ["strategy=ddp", "trainer.devices=2", "hydra.mode=MULTIRUN"], hydra_config=True
        )
        instance = _with_hydra(cfg)
        with pytest.raises(ValueError, match="hydra/launcher=slurm"):
            check_launch(cfg)
        monkeypatch.setenv("SLURM_NTASKS", "2")
        check_launch(cfg)
        monkeypatch.delenv("SLURM_NTASKS")
        single = compose_cfg(
            ["strategy=ddp", "trainer.devices=1", "hydra.mode=MULTIRUN"], hydra_config=True
        )
        _with_hydra(single)
        check_launch(single)
        run = compose_cfg(
            ["strategy=ddp", "trainer.devices=2", "hydra.mode=RUN"], hydra_config=True
        )
        _with_hydra(run)
        check_launch(run)
    finally:
        if instance is not None:
            instance.cfg = None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, True),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),  # the launching process, after launching
        ({"LOCAL_RANK": "1"}, False),  # a rank Lightning re-launched
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # first process of the second node
        ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, False),  # re-launched inside a Slurm shell
        ({"SLURM_PROCID": "3"}, False),
        ({"SLURM_PROCID": "0"}, True),
        ({"RANK": "2", "LOCAL_RANK": "0"}, False),
    ],
)
def test_rank_zero_process_from_launcher_environment(
    env: dict[str, str], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reasonft.sweep import is_rank_zero_process

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_rank_zero_process() is expected


TINY_TOY = [
    "data.source.n_train=8",
    "data.source.n_test=4",
    "model.build.steps=20",
    "model.build.n_pretrain=100",
    "eval.benchmarks.toy_test.limit=2",
    "eval.benchmarks.toy_test.n_samples=2",
    "eval.benchmarks.toy_test_greedy.limit=2",
    "eval.ks=[1,2]",
    "eval.heldout_entropy.limit=2",
    "eval.generator.max_new_tokens=32",
]


@pytest.mark.slow
def test_submitit_local_multirun_runs_the_toy_pipeline(tmp_path: Path) -> None:
    """`run.py -m hydra/launcher=local`: the job runs in a submitit process and returns the objective."""
    import pickle

    sweep_dir = tmp_path / "sweep"
    env = {
        **os.environ,
        "REASONFT_CACHE": str(tmp_path / "cache"),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "hydra/launcher=local",
            "stages=[base,evaluate,report]",
            *TINY_TOY,
            "seed=1",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweep.subdir=job${hydra.job.num}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, (
        f"the multirun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    results = json.loads((sweep_dir / "job0" / "results.json").read_text())
    assert results["objective"]["name"] == "pass@1"
    assert 0.0 <= results["objective"]["value"] <= 1.0
    (result_file,) = (sweep_dir / ".submitit").glob("*/*_0_result.pkl")
    outcome, job_return = pickle.loads(result_file.read_bytes())
    assert outcome == "success" and job_return.status.name == "COMPLETED"
    assert job_return.return_value == results["objective"]["value"]


# ---- Optuna sweep ---------------------------------------------------------------------------


def test_optuna_search_space_and_failure_policy() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import get_class
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = compose_cfg(["hparams_search=oxa_optuna"], hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    assert cfg.objective == "pass@1"
    get_class(cfg.hydra.callbacks.finish_wandb._target_)
    parser = OverridesParser.create()
    for key, value in sweeper.params.items():
        default = OmegaConf.select(cfg, key, throw_on_missing=True)
        dist = create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))
        assert dist.low <= default <= dist.high, (
            f"{key}: default {default} outside [{dist.low}, {dist.high}]"
        )
    ul = create_optuna_distribution_from_override(
        parser.parse_override(f"loss.terms.ul.weight={sweeper.params['loss.terms.ul.weight']}")
    )
    assert type(ul).__name__ == "LogUniformDistribution" and ul.low < 1e-4 < ul.high


def sweep_stand_in(cfg: DictConfig) -> float:
    """The Hydra task of this file: a W&B run per trial, trial 1 fails, others return a score."""
    import wandb
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job.num
    out = Path(cfg.paths.output_dir)
    run = wandb.init(project="sweeptest", dir=str(out), mode="offline", group=cfg.task_name)
    run.log({"job": job})
    (out / "trial.json").write_text(
        json.dumps(
            {
                "job": job,
                "run_id": run.id,
                "ul": cfg.loss.terms.ul.weight,
                "mu": cfg.select.promote.mu,
            }
        )
    )
    if job == 1:
        raise RuntimeError("trial 1 fails on purpose")
    return -((cfg.select.promote.mu - 2.5) ** 2) - abs(math.log10(cfg.loss.terms.ul.weight) + 4)


@pytest.mark.slow
def test_optuna_sweep_survives_a_failed_trial_and_ends_its_wandb_run(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
    }
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "-m",
            "hparams_search=oxa_optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, f"the sweep stopped:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    trials = [json.loads((sweep_dir / str(i) / "trial.json").read_text()) for i in range(3)]
    assert [t["job"] for t in trials] == [0, 1, 2]
    assert len({t["run_id"] for t in trials}) == 3, "a trial reused the previous trial's W&B run"
    assert all(1e-5 <= t["ul"] <= 1e-3 and 1.0 <= t["mu"] <= 2.0 for t in trials)
    optimized = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert optimized["name"] == "optuna" and math.isfinite(optimized["best_value"])

    from test_wandb_offline import read_finished_run

    exit_codes = {}
    for i in range(3):
        (run_dir,) = (sweep_dir / str(i) / "wandb").glob("offline-run-*")
        exit_codes[i] = read_finished_run(run_dir)["exit_code"]
    assert exit_codes == {0: 0, 1: 1, 2: 0}


# ---- sweep files ----------------------------------------------------------------------------


def _is_config_group(key: str) -> bool:
    return (CONF_DIR / key).is_dir()


def _values(spec: dict[str, Any]) -> list[Any]:
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


def test_wandb_sweep_parameters_are_hydra_overrides_of_existing_keys() -> None:
    sweep = yaml.safe_load((ROOT / "sweeps" / "oxa_wandb.yaml").read_text())
    assert (ROOT / sweep["program"]).is_file()
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("maximize", "minimize")
    assert sweep["metric"]["name"] == "objective"  # what wandb_artifacts.log_objective writes
    assert sweep["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]

    params = sweep["parameters"]
    groups = {k: v for k, v in params.items() if _is_config_group(k)}
    for group, spec in groups.items():
        for option in _values(spec):
            assert (CONF_DIR / group / f"{option}.yaml").is_file(), (
                f"{group}={option}: no such option"
            )
    group_overrides = [f"{k}={_values(v)[0]}" for k, v in groups.items()]
    cfg = compose_cfg(group_overrides)
    for key, spec in params.items():
        if key in groups:
            continue
        assert re.fullmatch(r"[A-Za-z_][\w]*(\.[\w@]+)*", key), f"{key} is not a Hydra override key"
        current = OmegaConf.select(cfg, key, throw_on_missing=True)
        assert current is not None, f"{key} does not exist in the composed config"
        for value in _values(spec):
            assert isinstance(value, type(current)) or (
                isinstance(current, float) and isinstance(value, (int, float))
            ), f"{key}: {value!r} does not match the config's {current!r}"
    # Every corner of the space composes as ${args_no_hyphens} would pass it.
    for pick in (0, -1):
        compose_cfg([f"{k}={_values(v)[pick]}" for k, v in params.items()])


def test_oxa_vs_sft_recipe_composes_for_every_method() -> None:
    script = (ROOT / "sweeps" / "oxa_vs_sft.sh").read_text()
    methods = re.search(r'METHODS="\$\{METHODS:-([\w,]+)\}"', script).group(1).split(",")
    seeds = re.search(r'SEEDS="\$\{SEEDS:-([\d,]+)\}"', script).group(1).split(",")
    assert 'run.py -m experiment="$METHODS" seed="$SEEDS"' in script
    assert len(seeds) == 3
    expected = {
        "toy_sft": ("toy_random", "sft"),
        "toy_sft_lp": ("toy_ppl_lowest", "sft"),
        "toy_oxa_mle": ("toy_ppl_gaussian", "oxa_mle"),
        "toy_oxa_full": ("toy_oxa", "oxa_full"),
    }
    assert methods == list(expected)
    for method in methods:
        cfg = compose_cfg([f"experiment={method}", f"seed={seeds[0]}"], hydra_config=True)
        choices = cfg.hydra.runtime.choices
        assert (choices.select, choices.loss) == expected[method]
        assert cfg.task_name == method


if __name__ == "__main__":
    import hydra

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(
        sweep_stand_in
    )()
