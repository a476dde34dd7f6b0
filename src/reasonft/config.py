"""OmegaConf resolvers and config helpers shared by run.py, the API and the tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("reasonft.root"):
        OmegaConf.register_new_resolver("reasonft.root", lambda: str(PROJECT_ROOT))


def group_option(group: str, option: str) -> Path:
    """The yaml of one option of a config group (the config group is the registry)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ValueError(f"no {group}={option!r}; choose one of {options} (files in {CONF_DIR / group})")
    return path
