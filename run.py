"""reasonft entry point: `python run.py [overrides]` runs the configured stages (the
package's reasonft/conf/config.yaml)."""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, which on a shared or
# small CPU can make a 2-thread step several times slower. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra
from omegaconf import DictConfig

import reasonft  # noqa: F401  (registers the config resolvers)
from reasonft.pipeline.runner import run_pipeline


@hydra.main(version_base="1.3", config_path="pkg://reasonft.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return run_pipeline(cfg)
    except Exception as err:
        # The cause first, naming the key; the traceback with HYDRA_FULL_ERROR=1 (errors.py).
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from reasonft.errors import stop

        hc = HydraConfig.get()
        stop(err, list(hc.overrides.task), multirun=hc.mode == RunMode.MULTIRUN)
        raise  # not reached: stop always raises


if __name__ == "__main__":
    main()
