"""OmegaConf resolvers and config helpers shared by run.py, the API and the tests."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# The checkout (README, run.py, bench/, scripts/): for the tests and benches only; a run writes
# under the folder it was started from (`launch_dir`), never here.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The Hydra configs ship inside the package (run.py reads them as pkg://reasonft.conf), so an
# installed wheel finds them as well as a checkout does.
CONF_MODULE = "reasonft.conf"
CONF_DIR = Path(str(resources.files(CONF_MODULE)))
# config.yaml's `task_name`: the chosen experiment preset's name.
TASK_NAME = "${reasonft.experiment:}"
NO_EXPERIMENT = "default"  # the task name of a run with experiment=null


def slug(text: str = "", limit: int = 60) -> str:
    """A folder-name-safe form of a run's overrides (`select=lalp_top,seed=1`); long ones are cut
    and end in a hash of the whole text, so two runs with other overrides never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", str(text)).strip("_")
    if len(safe) <= limit:
        return safe
    return f"{safe[: limit - 9]}~{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"


def launch_dir() -> str:
    """The folder the run was started from (`paths.root_dir`): Hydra's runtime.cwd inside a run
    (also in a sweep's jobs), else the current folder (a composed config, a notebook)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


def experiment_name(choices: Any) -> str:
    """`task_name`: the experiment preset Hydra's `choices` hold (`default` with ~experiment)."""
    return str(choices.get("experiment") or NO_EXPERIMENT)


def _task_name(*, _root_: DictConfig) -> str:
    """`${reasonft.experiment:}`: the chosen experiment, from the running Hydra app, else from the
    config's own `hydra` node (a multirun's sweeper is built before any job sets the app's)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return experiment_name(HydraConfig.get().runtime.choices)
    choices = OmegaConf.select(_root_, "hydra.runtime.choices")
    if choices is None:
        raise ValueError(
            "task_name: no Hydra run to take the chosen experiment's name from; compose with "
            "reasonft.config.compose_config(...), or set task_name=<name>"
        )
    return experiment_name(choices)


def package_configs() -> Any:
    """Hydra initialised on the package's configs, as a context: compose_config inside it reuses
    it (many compositions in a row save Hydra's start-up each)."""
    from hydra import initialize_config_module

    return initialize_config_module(config_module=CONF_MODULE, version_base="1.3")


def compose_config(overrides: Sequence[str] = (), *, return_hydra_config: bool = False) -> DictConfig:
    """The run's config as `python run.py <overrides>` composes it from the package's configs,
    with `task_name` already the chosen experiment's name (outside a Hydra app nothing else could
    tell it). Inside an initialised Hydra (run.py, `package_configs()`) it composes there."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    else:
        with package_configs():
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if cfg._get_node("task_name")._value() == TASK_NAME:  # not set on the command line
            cfg.task_name = experiment_name(cfg.hydra.runtime.choices)
        if not return_hydra_config:
            del cfg["hydra"]
    return cfg


def register_resolvers() -> None:
    from reasonft.schema import register_schemas

    register_schemas()
    if not OmegaConf.has_resolver("reasonft.launch_dir"):
        OmegaConf.register_new_resolver("reasonft.launch_dir", launch_dir)
    if not OmegaConf.has_resolver("reasonft.experiment"):
        OmegaConf.register_new_resolver("reasonft.experiment", _task_name)
    if not OmegaConf.has_resolver("reasonft.slug"):
        OmegaConf.register_new_resolver("reasonft.slug", slug)
    if not OmegaConf.has_resolver("reasonft.unique"):
        # Resolved once per run folder (cached): two runs started in the same second still differ.
        OmegaConf.register_new_resolver("reasonft.unique", lambda: secrets.token_hex(3), use_cache=True)


def group_option(group: str, option: str) -> Path:
    """The yaml of one option of a config group (the config group is the registry)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ValueError(f"no {group}={option!r}; choose one of {options} (files in {CONF_DIR / group})")
    return path


def compose_option(group: str, option: str, seed: int = 42) -> DictConfig:
    """One option of a config group as a run without an experiment preset composes it (its own
    defaults list included, `${seed}` taken as `seed`), its values resolved: what the notebook API
    builds a component from."""
    group_option(group, option)  # a clear error for an unknown option
    root = compose_config([f"{group}={option}", "~experiment", f"seed={seed}"])
    node = OmegaConf.select(root, group.replace("/", "."))
    return OmegaConf.create(OmegaConf.to_container(node, resolve=True))
