"""Presets compose: from the default and from every preset, switching an option of any group on
the command line composes and passes start-up (every component built and checked), or stops at
start-up with the key to set when the switch asks for something this machine lacks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import CONF_DIR, compose_config, package_configs
from reasonft.pipeline.startup import start

PRESETS = [None] + sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# Groups whose options carry different keys: switching them after a preset is where a preset
# that patched an option's keys would break. Every option of every group is switched from the
# default and from one paper preset; from every other preset, a rotating share of the selectors and
# losses (the groups a preset picks; sized variants such as toy_oxa or smollm2_oxa are checked from
# the first two).
OPTION_GROUPS = ("select", "loss")
ALL_GROUPS = ("data", "model", "generate", "verify", "score", "select", "loss", "train", "trainer",
              "strategy", "logger", "callbacks", "eval")
EVERY_GROUP_FROM = (None, "oxa_full_1.5b")
OTHER_PRESET_STRIDE = 6
HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
HAS_CUDA = torch.cuda.is_available()
# Model options of real checkpoints (model.pretrained: true), and the data options whose world
# the toy student was built on.
PRETRAINED = ("hf", "qwen", "smollm2")
TOY_STUDENT_DATA = ("toy", "toy_real", "toy_warmup")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _needed(group: str, option: str, tmp: Path) -> list[str]:
    """The values an option requires (its `???` keys) and the outputs it can serve."""
    return {
        ("model", "hf"): [f"model.path={tmp}"],
        ("model", "random"): [f"model.build.tokenizer={tmp}"],
        ("select", "single_teacher"): ["select.teacher=terse"],
        ("rank", "teacher"): ["stages=[rank,report]"],
    }.get((group, option), [])


def _expected_error(preset: str | None, group: str, option: str, data: str) -> str | None:
    """The start-up error this switch must give on this machine (None: it must start)."""
    if group == "strategy" and option.startswith("deepspeed") and not HAS_DEEPSPEED:
        return "deepspeed"
    uses_self_samples = preset is None or preset.startswith(("toy_oxa_full", "oxa_full"))
    if group == "select":
        uses_self_samples = option.endswith(("oxa", "confident_incorrect"))
    if group == "generate" and option == "vllm" and not HAS_VLLM and uses_self_samples:
        return "vLLM"
    if group == "eval" and option not in ("toy", "toy_small", "toy_quick") and not HAS_VLLM:
        return "vLLM"
    if group == "trainer" and option == "gpu" and not HAS_CUDA:
        return "gpu"
    toy_settings = preset is None or preset.startswith("toy")
    preset_model = "toy" if toy_settings else ("smollm2_warm" if preset.startswith("smollm2") else "qwen")
    model = option if group == "model" else preset_model
    if model.startswith(PRETRAINED) and (toy_settings or data in ("toy", "toy_lalp")):
        return "settings_for / data"
    if model.startswith("toy") and data not in TOY_STUDENT_DATA:
        return "model.build.world"
    return None


def _cases():
    """Every option of every group from EVERY_GROUP_FROM; from each other preset, a rotating sixth
    of the selectors and losses (every such option is still switched from four or more presets)."""
    switched = [(group, option) for group in OPTION_GROUPS for option in options(group)
                if not option.startswith("toy_")]
    for i, preset in enumerate(PRESETS):
        if preset in EVERY_GROUP_FROM:
            yield from ((preset, group, option) for group in ALL_GROUPS for option in options(group))
        else:
            yield from ((preset, *case) for k, case in enumerate(switched) if (i + k) % OTHER_PRESET_STRIDE == 0)


@pytest.mark.slow
def test_every_option_after_every_preset_starts(tmp_path):
    failures = []
    with package_configs():  # one Hydra start-up for the few hundred compositions
        for preset, group, option in _cases():
            overrides = [f"experiment={preset}"] if preset else []
            overrides += [f"{group}={option}", f"paths.output_dir={tmp_path}/run"]
            overrides += [f"paths.cache_dir={tmp_path}/cache", *_needed(group, option, tmp_path)]
            # The paper presets evaluate with vLLM; where it is missing, the transformers backend
            # stands in so that the rest of the preset is checked (its own test is below).
            # They also train on GPUs: where CUDA is missing the CPU accelerator stands in.
            paper = preset is not None and not preset.startswith("toy")
            if paper and not HAS_VLLM and group != "eval":
                overrides.append("generate@eval.generator=hf")
            if paper and not HAS_CUDA and group != "trainer":
                overrides.append("trainer.accelerator=cpu")
            cfg = compose_config(overrides=overrides)
            expected = _expected_error(preset, group, option, cfg.data.name)
            try:
                start(cfg)
                error = None
            except Exception as err:  # noqa: BLE001 - compared with the expectation below
                error = f"{type(err).__name__}: {err}"
            if expected is None and error is not None:
                failures.append(f"{preset} {group}={option}: {error[:300]}")
            elif expected is not None and (error is None or expected not in error):
                failures.append(f"{preset} {group}={option}: expected an error naming {expected!r}, got {error}")
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(HAS_VLLM or HAS_CUDA, reason="vLLM and a GPU are here")
def test_paper_preset_on_a_cpu_machine_stops_at_startup_naming_what_is_missing(tmp_path):
    gpu = compose_config(overrides=["experiment=oxa_full_1.5b", f"paths.output_dir={tmp_path}"])
    cpu = compose_config(overrides=["experiment=oxa_full_1.5b", f"paths.output_dir={tmp_path}",
                                    "trainer.accelerator=cpu"])
    with pytest.raises(ValueError, match="(?s)trainer: .*gpu"):
        start(gpu)
    with pytest.raises(ValueError, match="(?s)eval: .*vLLM"):
        start(cpu)


def test_toy_presets_score_given_the_prompt_and_the_lalp_study_keeps_its_student():
    """The toy OXA presets read PPL given the prompt (the toy student never saw a response
    alone); the paper presets keep the official response-only PPL; the LALP study runs on the
    student its figures were measured with."""
    for preset in ("toy_sft", "toy_sft_lp", "toy_oxa_mle", "toy_oxa_full"):
        cfg = compose_config(overrides=[f"experiment={preset}"])
        assert cfg.score.method == "ppl" and cfg.score.condition_on_prompt is True, preset
        assert cfg.model.build.pretrain_max_multiplier == 2, preset
    for preset in ("oxa_full_1.5b", "sft_lp_7b"):
        cfg = compose_config(overrides=[f"experiment={preset}"])
        assert cfg.score.condition_on_prompt is False, preset
    for preset in sorted(p.stem for p in (CONF_DIR / "experiment").glob("toy_lalp_*.yaml")):
        build = compose_config(overrides=[f"experiment={preset}"]).model.build
        assert list(build.pretrain_operators) == ["+", "-", "/"], preset
        assert build.pretrain_max_multiplier is None and build.steps == 2200, preset


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _resolved(*overrides: str) -> dict[str, Any]:
    cfg = compose_config(overrides=[*overrides, "paths.output_dir=/tmp/reasonft-presets-run"])
    return _flat(OmegaConf.to_container(cfg, resolve=True))


def test_task_name_is_the_chosen_experiment():
    with package_configs():
        for preset in PRESETS[1:]:
            assert compose_config(overrides=[f"experiment={preset}"]).task_name == preset
        assert compose_config().task_name == "toy_oxa_full"  # the default experiment
        assert compose_config(overrides=["~experiment"]).task_name == "default"
        assert compose_config(overrides=["experiment=toy_sft", "task_name=mine"]).task_name == "mine"
        # A multirun's sweeper is built from the composed config before any job sets Hydra's.
        sweep = compose("config", overrides=["hparams_search=oxa_optuna", "experiment=toy_sft"],
                        return_hydra_config=True)
        assert sweep.hydra.sweeper.study_name == "oxa_toy_sft"
    presets = [OmegaConf.load(CONF_DIR / "experiment" / f"{p}.yaml") for p in PRESETS[1:]]
    assert not [p for p in presets if "task_name" in p]


@pytest.mark.parametrize("method", ["oxa_full", "oxa_mle", "sft", "sft_lp"])
def test_a_7b_preset_is_its_1_5b_preset_at_scale_7b(method):
    """scale= holds what the student's size changes (model, learning rate, the promote window's
    mu); `experiment=<method>_1.5b scale=7b` is the 7B preset."""
    with package_configs():
        small, large = _resolved(f"experiment={method}_1.5b"), _resolved(f"experiment={method}_7b")
        switched = _resolved(f"experiment={method}_1.5b", "scale=7b")
    # (model.path is each size's environment variable, both unset here or not)
    differ = {k for k in small.keys() | large.keys() if small.get(k) != large.get(k)} - {"model.path"}
    mu = {"oxa_full": {"select.promote.mu"}, "oxa_mle": {"select.mu"}}.get(method, set())
    assert differ == {"task_name", "train.optimizer.lr", "model.name", *mu}, differ
    assert (small["train.optimizer.lr"], large["train.optimizer.lr"]) == (2.5e-4, 5.0e-5)
    assert (small["model.name"], large["model.name"]) == ("qwen2.5-math-1.5b", "qwen2.5-math-7b")
    for key in mu:
        assert (small[key], large[key]) == (2.5, 3.0)
    assert {k: v for k, v in switched.items() if k != "task_name"} == {
        k: v for k, v in large.items() if k != "task_name"
    }


def test_an_option_switched_after_a_7b_preset_keeps_its_own_keys():
    """The window's centre follows scale=7b into select=ppl_gaussian wherever it is chosen, and
    a selector without a window gets no mu."""
    with package_configs():
        lowest = compose_config(overrides=["experiment=oxa_full_7b", "select=ppl_lowest"]).select
        gaussian = compose_config(overrides=["experiment=sft_7b", "select=ppl_gaussian"]).select
        toy = compose_config(overrides=["select=ppl_gaussian"]).select  # scale=default
    assert "promote" not in lowest and "mu" not in lowest
    assert (gaussian.mu, toy.mu) == (3.0, 2.5)
