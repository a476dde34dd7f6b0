"""Sweeps that survive their failed jobs; launch layouts that cannot work, refused at start-up;
and which process of a multi-process job owns the pipeline's artifacts.

How a failed job behaves in a Hydra 1.3 multirun: `hydra.core.utils.run_job` catches the job's
exception and returns a `JobReturn` with status FAILED. The Optuna sweeper records that trial as
FAIL and goes on while the failure rate stays within `hydra.sweeper.max_failure_rate`
(conf/hparams_search/oxa_optuna.yaml sets 1.0: never stop); the basic sweeper runs the rest of the
batch and raises at its end. What Hydra does not do is end the job's loggers: a W&B run opened by
`wandb.init` (or a WandbLogger) stays the process's active run, and the next job of the sweep,
which runs in the same process, would log into it. `FinishWandbRun`, a Hydra callback, finishes
it at the end of every job, with exit code 1 when the job failed.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

log = logging.getLogger(__name__)

# Strategies whose processes Lightning launches by re-running the script (`sys.argv`).
_SCRIPT_LAUNCHED = ("ddp", "fsdp", "deepspeed")


class FinishWandbRun(Callback):
    """Hydra callback (`hydra.callbacks`): finish the job's W&B run when the job ends."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        wandb = sys.modules.get("wandb")  # never import wandb for a job that did not use it
        if wandb is None or wandb.run is None:
            return
        failed = job_return.status == JobStatus.FAILED
        if failed:
            log.error(
                "job failed (%s); finishing its W&B run with exit code 1", job_return._return_value
            )
        wandb.run.finish(exit_code=1 if failed else 0)


def is_rank_zero_process() -> bool:
    """Whether this process is global rank 0 of its job, from what its launcher set, before any
    Trainer exists.

    Lightning's DDP launcher re-runs the script (`run.py`) for ranks > 0 with `LOCAL_RANK` (and
    `NODE_RANK`) set, and Slurm starts one task per rank with `SLURM_PROCID`; those processes
    run the whole pipeline again from the top. Only the process this returns True for should
    write stage artifacts or evaluate; the others should only join the training.

    Not Lightning's rank utilities (`rank_zero_only.rank`, `lightning_fabric`'s `_get_rank`):
    they read `RANK`, else `LOCAL_RANK`, and never `NODE_RANK`, so in the processes Lightning
    re-launches on a second node (`LOCAL_RANK=0`, `NODE_RANK=1`, no `RANK`) they answer rank 0.
    On one node both agree.
    """
    env = os.environ
    if "RANK" in env:  # torchrun and other launchers that set the global rank
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:  # Lightning's re-launch (checked before Slurm: the children inherit it)
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", 0)) == 0
    return int(env.get("SLURM_PROCID", 0)) == 0


def world_size(cfg: DictConfig) -> int | None:
    """`trainer.devices * trainer.num_nodes`, or None when Lightning decides (`auto`, -1)."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if isinstance(devices, (list, ListConfig)):
        devices = len(devices)
    if isinstance(devices, int) and devices > 0 and isinstance(nodes, int):
        return devices * nodes
    return None


def _strategy_name(cfg: DictConfig) -> str:
    node = cfg.get("strategy") or {}
    return str(node.get("_target_") or node.get("name") or "auto").lower()


def check_launch(cfg: DictConfig) -> None:
    """Refuse, at start-up, a multirun whose jobs Lightning would have to re-launch.

    Lightning starts the ranks of ddp/fsdp/deepspeed by re-running the script with the same
    command line (`_SubprocessScriptLauncher`); in a Hydra multirun that command line is the whole
    sweep (`-m ...`), so every rank would start its own sweep. Multi-device sweep jobs need a
    launcher that starts one process per device itself: `hydra/launcher=slurm` (submitit,
    `tasks_per_node = trainer.devices`, ranks read from the Slurm environment).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or (world_size(cfg) or 1) <= 1:
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    if not any(name in _strategy_name(cfg) for name in _SCRIPT_LAUNCHED):
        return
    if "SLURM_NTASKS" in os.environ:  # a Slurm task per rank: Lightning launches nothing
        return
    raise ValueError(
        f"a multirun with {world_size(cfg)} processes per job "
        "(trainer.devices x trainer.num_nodes) "
        f"and strategy {_strategy_name(cfg)!r} cannot run under the launcher "
        f"{hydra_cfg.launcher.get('_target_')}: Lightning would re-run the whole sweep command "
        "for every rank. Use hydra/launcher=slurm (one task per device), or run each "
        "configuration as a single run (without -m)."
    )
