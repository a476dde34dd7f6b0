"""Start-up: bind every stage to its config slice, resolve the plan, and build and check every
component the planned stages need, before the first stage runs.

A wrong option, a wrongly typed value, a missing optional dependency or an impossible size
stops here, in seconds, with the config key's name — not after generation and scoring have run.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from reasonft.data.prompts import PromptFormat
from reasonft.pipeline.bounds import check_bounds
from reasonft.pipeline.cache_dir import check_cache_dir
from reasonft.pipeline.components import build
from reasonft.pipeline.plan import Plan, make_plan
from reasonft.pipeline.stage import Stage
from reasonft.stages.base_student import builds_base
from reasonft.sweep import check_launch

log = logging.getLogger(__name__)


@dataclass
class Started:
    """The run's stage objects (bound to their config slices and configured), its plan, and what
    every stage shares: the data source and the prompt format."""

    config: dict[str, Any]  # the run's config, resolved to plain values (without `hydra`)
    plan: Plan
    stages: dict[str, Stage]
    source: Any
    prompt_format: PromptFormat


def check_model_path(path: Any) -> None:
    """A named checkpoint exists when it is a local path (a hub id is left to transformers)."""
    if path is None:
        raise ValueError("model.path: no checkpoint named and model.build is not set")
    text = str(path)
    if text.startswith(("/", ".", "~")) and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"model.path={text}: no such file or folder")


# data options whose prompt format is the toy student's (no instruction, responses ending with EOS).
TOY_PROMPT_DATA = ("toy", "toy_lalp")


def check_settings_fit_model(cfg: DictConfig, stages: set[str]) -> None:
    """A pretrained model never meets toy-world settings silently: they stop the run (naming
    them and what to use instead) unless `allow_toy_settings=true`, which says them as a warning.
    The sizes, learning rate and windows matter where the run selects or trains; the prompt
    format wherever the model is run."""
    model = cfg.get("model") or {}
    if not model.get("pretrained", False):
        return
    found = []
    trains = bool(stages & {"generate", "score", "select", "train", "rl"})
    settings_for = cfg.get("settings_for", "toy")
    if trains and getattr(settings_for, "value", settings_for) == "toy":
        found.append(
            "settings_for=toy: the toy presets' sizes, learning rate (train.optimizer.lr="
            f"{cfg.train.optimizer.get('lr')}) and selection windows are placed for the toy student"
        )
    data_name = (cfg.get("data") or {}).get("name")
    if data_name in TOY_PROMPT_DATA:
        found.append(
            f"data={data_name}: the toy student's prompt format (no instruction suffix, "
            "responses ending with EOS); data=toy_real prompts the toy problems for a real model"
        )
    if not found:
        return
    what = f"model={model.get('name')} is a pretrained checkpoint (model.pretrained=true)"
    if cfg.get("allow_toy_settings", False):
        for item in found:
            log.warning("allow_toy_settings=true: %s runs with %s", what, item)
        return
    raise ValueError(
        f"settings_for / data: {what}, but the run has toy-world settings: " + "; ".join(found)
        + ". Use a preset placed for real checkpoints (experiment=smollm2_oxa_full, "
        "experiment=oxa_full_1.5b, ...) or say allow_toy_settings=true"
    )


def stage_objects(cfg: DictConfig) -> dict[str, Stage]:
    """The stages the `pipeline` config group lists, in its order, each instantiated and checked."""
    stages: dict[str, Stage] = {}
    for name, node in (cfg.get("pipeline") or {}).items():
        if node is None:  # `pipeline.<name>=null` removes a stage
            continue
        stage = build(f"pipeline.{name}", node)
        if not isinstance(stage, Stage):
            raise TypeError(f"pipeline.{name}: {type(stage).__name__} is not a reasonft Stage")
        if stage.name != name:
            raise ValueError(f"pipeline.{name}: its class names itself {stage.name!r}")
        stages[name] = stage
    if not stages:
        raise ValueError("pipeline: no stage is configured")
    return stages


def start(cfg: DictConfig) -> Started:
    """Bind each stage to its config slice, resolve the plan, build and check every component
    the planned stages need; raise on any error."""
    check_bounds(cfg)
    check_cache_dir(cfg.get("paths"))
    config = resolved(cfg)
    stages = stage_objects(cfg)
    for stage in stages.values():
        stage.bind(config_slice(config, (*stage.reads, *stage.unhashed)))
    plan = make_plan([str(s) for s in cfg.stages], stages, has_build=builds_base(cfg.model))
    started = Started(
        config=config,
        plan=plan,
        stages=stages,
        source=build("data.source", cfg.data.source),
        prompt_format=PromptFormat.from_config(cfg.data),
    )
    planned = [s for s in plan.stages if s in stages]
    if any(stages[s].loads_model for s in planned):
        check_settings_fit_model(cfg, set(planned))
        if "base" not in planned:
            check_model_path(cfg.model.path)
    for name in planned:
        stages[name].configure(started, plan.facts)
    check_launch(cfg)
    return started


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain, resolved values; Hydra's own node (present when composed with
    `return_hydra_config`) is left out: its sweep paths resolve only inside a running job."""
    node = cfg.copy()
    with open_dict(node):
        node.pop("hydra", None)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def config_slice(config: dict[str, Any], paths: tuple[str, ...]) -> DictConfig:
    """The resolved values at `paths`, nested as in the whole config (absent paths left out)."""
    out: dict[str, Any] = {}
    for path in paths:
        *heads, leaf = path.split(".")
        node: Any = config
        for part in heads:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        into = out
        for head in heads:
            into = into.setdefault(head, {})
        into[leaf] = copy.deepcopy(node[leaf])
    return OmegaConf.create(out)
