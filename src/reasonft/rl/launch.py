"""How many processes the rl stage runs on, and how they must be started.

TRL's GRPOTrainer runs data-parallel through accelerate: one process per rank, started by a
launcher that sets RANK / WORLD_SIZE / MASTER_ADDR (torchrun, `accelerate launch`, Slurm with
those set). Lightning's own launcher — which `strategy=ddp trainer.devices=2` uses for the other
stages, re-running run.py once rank 0 first fits or predicts — does not start it. So with
several devices the run is launched by torchrun, whose processes Lightning's stages also accept
(its TorchElastic environment), and start-up stops with that command when it was not.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig


def _strategy_name(node: Any) -> str:
    if node is None:
        return "auto"
    if node.get("name") is not None:
        return str(node.name)
    return str(node.get("_target_", "auto")).rsplit(".", 1)[-1]


def requested_world_size(cfg: DictConfig) -> int:
    """trainer.devices x trainer.num_nodes (1 for devices=auto)."""
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, str) and devices == "auto":
        return 1
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return count * int(cfg.trainer.get("num_nodes", 1) or 1)


def check_rl_launch(cfg: DictConfig, environ: dict[str, str] | None = None) -> int:
    """The world size the rl stage will run on; raises, saying how to launch, when it cannot."""
    env = os.environ if environ is None else environ
    wanted = requested_world_size(cfg)
    launched = int(env.get("WORLD_SIZE", "1"))
    strategy = _strategy_name(cfg.get("strategy"))
    if wanted > 1 and strategy not in ("ddp", "DDPStrategy"):
        raise ValueError(
            f"strategy={strategy} with trainer.devices x trainer.num_nodes = {wanted}: the rl stage "
            "runs TRL's GRPOTrainer data-parallel (DDP through accelerate); use strategy=ddp"
        )
    if launched != wanted:
        if launched == 1:
            raise RuntimeError(
                f"strategy={strategy} trainer.devices={cfg.trainer.get('devices')}: the rl stage runs "
                "TRL's GRPOTrainer, one process per rank started by torchrun (Lightning's launcher "
                "does not start it); launch the same command with `torchrun --nproc_per_node "
                f"{wanted // int(cfg.trainer.get('num_nodes', 1) or 1)} run.py ...` (every stage "
                "accepts torchrun's processes)"
            )
        raise RuntimeError(
            f"WORLD_SIZE={launched} processes were launched but trainer.devices x "
            f"trainer.num_nodes = {wanted}: make them agree"
        )
    return wanted
