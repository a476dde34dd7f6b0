"""Structured configs: the types of the keys that no component constructor checks, so that a
wrongly typed value (`train.micro_batch_size=abc`, `seed=x`) fails when the config is composed,
with the key's name. Registered in Hydra's ConfigStore and named first in conf/config.yaml's
defaults; every other group is typed by the constructor of its `_target_` at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class EpochEnd(str, Enum):
    shortest = "shortest"  # an epoch ends when either pool cannot fill a step (official)
    ce = "ce"              # CE sets the epoch, UL cycles
    official = "official"  # the official sampler: micro-steps, a partial last step (sampler.py)


class SettingsFor(str, Enum):
    toy = "toy"    # sizes, learning rate and selection windows placed for the toy student
    real = "real"  # placed for pretrained checkpoints (the paper and smollm2_* presets)


class Overlength(str, Enum):
    drop = "drop"
    truncate = "truncate"


@dataclass
class TrainConfig:
    optimizer: Any = MISSING
    scheduler: Any = None
    micro_batch_size: int = 2
    ce_per_step: int = 7
    ul_per_step: int = 1
    epoch_end: EpochEnd = EpochEnd.shortest
    max_length: int = 512
    overlength: Overlength = Overlength.drop
    chunk_tokens: int = 512
    seed: int = 42
    ckpt_path: str | None = None
    num_workers: int = 0
    group_by_length: bool = False
    packing: bool = False
    gradient_checkpointing: bool = False


@dataclass
class RunConfig:
    """The root: typed top-level keys, the train group typed; other groups free-form here."""

    stages: list[str] = field(default_factory=lambda: ["train", "evaluate", "report"])
    task_name: str = MISSING
    seed: int = 42
    objective: str = "pass@1"
    # What the run's settings were placed for (set by the experiment presets), and whether a
    # pretrained model may run with toy-world settings (pipeline/startup.py says which ones).
    settings_for: SettingsFor = SettingsFor.toy
    allow_toy_settings: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: Any = None
    data: Any = None
    model: Any = None
    generate: Any = None
    verify: Any = None
    score: Any = None
    select: Any = None
    rank: Any = None
    pipeline: Any = None
    loss: Any = None
    trainer: Any = None
    strategy: Any = None
    logger: Any = None
    callbacks: Any = None
    eval: Any = None
    rl: Any = None
    experiment: Any = None
    hparams_search: Any = None


def register_schemas() -> None:
    ConfigStore.instance().store(name="reasonft_schema", node=RunConfig)
