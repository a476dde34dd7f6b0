"""Start-up: build and check every component a run needs before its first stage runs.

A wrong option, a wrongly typed value, a missing optional dependency or an impossible size
stops here, in seconds, with the config key's name — not after generation and scoring have run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import SCORE_COLUMNS
from reasonft.models.gguf import is_gguf
from reasonft.pipeline.bounds import check_bounds
from reasonft.pipeline.cache_dir import check_cache_dir
from reasonft.pipeline.plan import Plan, make_plan
from reasonft.selection.teacher_rank import TeacherRanker
from reasonft.sweep import check_launch
from reasonft.training.strategies import check_strategy
from reasonft.training.train import check_train_config

log = logging.getLogger(__name__)
GGUF_STUDENT = "reasonft.models.gguf.GGUFStudent"


@dataclass
class Components:
    """What the stages call, each built from its own config node."""

    plan: Plan
    source: Any
    prompt_format: PromptFormat
    builder: Any = None
    generator: Any = None
    verifier: Any = None
    scorer: Any = None
    selector: Any = None
    loss: Any = None
    evaluator: Any = None


def build(key: str, node: Any, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`, an error naming the config key when it fails."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        raise ValueError(f"{key}: {err}") from err
    except (TypeError, ValueError) as err:
        raise type(err)(f"{key}: {err}") from err


def required_scores(selector: Any) -> tuple[str, ...]:
    """The score columns a selector reads (empty: it reads the verified pool as it is)."""
    return tuple(c for c in SCORE_COLUMNS if c in selector.requires)


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
    trains = bool(stages & {"generate", "score", "select", "train"})
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


def check_importable(cfg: DictConfig, group: str) -> None:
    """Each `_target_` of a mapping group (logger, callbacks) imports, without building it (a
    logger creates files and runs when built)."""
    for name, node in (cfg.get(group) or {}).items():
        if node and "_target_" in node:
            try:
                get_class(node._target_)
            except Exception as err:
                raise ValueError(f"{group}.{name}._target_={node._target_!r}: {err}") from err


def start(cfg: DictConfig) -> Components:
    """Build the components `cfg.stages` needs and resolve the stage plan; raise on any error."""
    requested = [str(s) for s in cfg.stages]
    check_bounds(cfg)
    check_cache_dir(cfg.get("paths"))
    source = build("data.source", cfg.data.source)
    selector = None
    if {"select", "train"} & set(requested):  # the only outputs that read a selection
        selector = build("select", cfg.select)
    gguf_file = cfg.model.get("build") is None and is_gguf(cfg.model.get("path"))
    plan = make_plan(
        requested,
        has_build=cfg.model.get("build") is not None or gguf_file,
        self_samples=selector is not None and selector.reads_self_samples,
        score_columns=required_scores(selector) if selector is not None else (),
        is_ranking=isinstance(selector, TeacherRanker),
    )
    parts = Components(
        plan=plan, source=source, prompt_format=PromptFormat.from_config(cfg.data), selector=selector
    )
    stages = set(plan.stages)
    if stages & {"generate", "score", "train", "evaluate"}:  # the stages that load the model
        check_settings_fit_model(cfg, stages)
    if gguf_file:  # converted once by the base stage, then a local checkpoint like any other
        parts.builder = build("model.path", {"_target_": GGUF_STUDENT, "file": cfg.model.path})
    elif "base" in stages:
        parts.builder = build("model.build", cfg.model.build)
    elif stages & {"generate", "score", "train", "evaluate"}:
        check_model_path(cfg.model.path)
    if "generate" in stages:
        parts.generator = build("generate", cfg.generate)
    if "verify" in stages:
        parts.verifier = build("verify", cfg.verify)
    if "score" in stages:
        parts.scorer = _scorer_for(cfg, plan, parts.prompt_format)
    if "train" in stages:
        parts.loss = build("loss", cfg.loss)
        check_strategy(cfg.get("strategy"))
        check_train_config(cfg, parts.loss)
        check_importable(cfg, "logger")
        check_importable(cfg, "callbacks")
    if "evaluate" in stages:
        parts.evaluator = build("eval", cfg.eval)
    check_launch(cfg)
    return parts


def _scorer_for(cfg: DictConfig, plan: Plan, prompt_format: PromptFormat) -> Any:
    """The configured scorer, widened to produce every score column the selector reads."""
    scorer = build("score", cfg.score, prompt_format=prompt_format.as_dict())
    if not set(plan.score_columns) <= scorer.produces:
        scorer = scorer.with_columns(plan.score_columns)
    return scorer
