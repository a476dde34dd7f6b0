"""Structured configs: the types of the keys that no component constructor checks, so that a
wrongly typed value (`train.micro_batch_size=abc`, `seed=x`) fails when the config is composed,
with the key's name. Registered in Hydra's ConfigStore and named first in conf/config.yaml's
defaults; every other group is typed by the constructor of its `_target_` at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


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
    # Sequences of each record kind (a loss term's loss_type) per optimiser step.
    per_step: dict[str, int] = field(default_factory=lambda: {"ce": 7, "ul": 1})
    # shortest | official | a pool of per_step (it sets the epoch, the others cycle); checked at
    # start-up against per_step's keys (training/train.py), which no Enum can list.
    epoch_end: str = "shortest"
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
    schema = OmegaConf.structured(RunConfig)
    # The record kinds are the loss terms' loss_types, not a fixed set: `train.per_step` takes new
    # keys (`train.per_step={ce: 4, ul: 2, ce_weighted: 2}`) while its values stay typed ints.
    OmegaConf.set_struct(schema.train.per_step, False)
    ConfigStore.instance().store(name="reasonft_schema", node=schema)
