"""Whether the score and generate stages run on several processes, and the Trainer they use.

They run through `trainer.predict` on `trainer.devices * trainer.num_nodes` processes when that
is more than one and the configured `strategy` is launched the way DDP is: Lightning re-runs the
script (`run.py`) for ranks > 0, or a cluster launcher (Slurm, torchrun) started every rank.
That holds for `ddp`, `fsdp` and `deepspeed_*`. Prediction itself always uses plain DDP: the
frozen student is replicated on every rank (DDP does not wrap a module outside `fit`), and a
sharded strategy would gain nothing for inference but a gather per forward.

Strategies that start their ranks another way (`ddp_spawn`, `ddp_fork`, `ddp_notebook`) would
pickle the stage into fresh processes that never walk the pipeline, so with them both stages
run in one process (said once in the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from reasonft.sweep import world_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictRanks:
    """Where the predicting stages run: `trainer.accelerator/devices/num_nodes`, with DDP."""

    accelerator: Any
    devices: Any
    num_nodes: int
    process_group_backend: str | None
    world_size: int

    def trainer_kwargs(self) -> dict[str, Any]:
        """Arguments for one `pl.Trainer` (a Strategy instance belongs to one Trainer)."""
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "strategy": DDPStrategy(process_group_backend=self.process_group_backend),
        }


def predict_ranks(cfg: DictConfig) -> PredictRanks | None:
    """Where the score and generate stages predict, or None when they run in this one process
    (world size 1, or a strategy not launched like DDP)."""
    from reasonft.training.train import build_strategy

    world = world_size(cfg)
    if world is None or world < 2:
        return None
    t = cfg.trainer
    placement = {
        "accelerator": t.get("accelerator", "auto"),
        "devices": t.get("devices", 1),
        "num_nodes": t.get("num_nodes", 1),
    }
    strategy_node = cfg.get("strategy")
    configured = pl.Trainer(
        **placement,
        strategy=build_strategy(strategy_node),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if not isinstance(configured.strategy.launcher, _SubprocessScriptLauncher):
        log.warning(
            "strategy %s starts its %d processes without re-running run.py, so the score and "
            "generate stages run in one process; choose strategy=ddp (or fsdp, deepspeed_z2/z3) "
            "to run them on every device",
            type(configured.strategy).__name__,
            world,
        )
        return None
    backend = strategy_node.get("process_group_backend") if strategy_node is not None else None
    return PredictRanks(**placement, process_group_backend=backend, world_size=world)
