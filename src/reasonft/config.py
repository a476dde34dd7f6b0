"""OmegaConf resolvers and config helpers shared by run.py, the API and the tests."""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def slug(text: str = "", limit: int = 60) -> str:
    """A folder-name-safe form of a run's overrides (`select=lalp_top,seed=1`); long ones are cut
    and end in a hash of the whole text, so two runs with other overrides never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", str(text)).strip("_")
    if len(safe) <= limit:
        return safe
    return f"{safe[: limit - 9]}~{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    from reasonft.schema import register_schemas

    register_schemas()
    if not OmegaConf.has_resolver("reasonft.root"):
        OmegaConf.register_new_resolver("reasonft.root", lambda: str(PROJECT_ROOT))
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
    """One option of a config group composed by Hydra (its own defaults list included), its
    values resolved, `${seed}` taken as `seed`: what the notebook API builds a component from."""
    from hydra import compose, initialize_config_dir

    group_option(group, option)  # a clear error for an unknown option
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        root = compose(f"{group}/{option}")
    with open_dict(root):
        root.seed = seed
    node = OmegaConf.select(root, group.replace("/", "."))
    return OmegaConf.create(OmegaConf.to_container(node, resolve=True))
