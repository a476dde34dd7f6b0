"""Notebook entry points: `select(records, "ppl_gaussian", n=..., ...)` and `rank_teachers(records)`.

A strategy is a file of the Hydra config group `conf/select/`; keyword arguments override its
keys (nested keys as dicts, e.g. `promote={"mu": 3.0}` for `oxa`). The config group is the
registry: adding `conf/select/<name>.yaml` adds a strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import hydra.utils
from omegaconf import DictConfig, OmegaConf

from reasonft.config import CONF_DIR, compose_option
from reasonft.data.records import as_dataset, like_input
from reasonft.selection.base import Selection
from reasonft.selection.teacher_rank import TeacherRanker, TeacherRanking

SELECT_CONF_DIR = CONF_DIR / "select"


def available_strategies() -> list[str]:
    """Names of the files in conf/select/ (without .yaml)."""
    return sorted(p.stem for p in SELECT_CONF_DIR.glob("*.yaml"))


def _check_keys(cfg: DictConfig, params: Mapping[str, Any], where: str) -> None:
    valid = sorted(k for k in cfg if k != "_target_")
    for key, value in params.items():
        if key == "_target_" or key not in valid:
            raise ValueError(f"{where}: unknown parameter {key!r}; valid keys: {valid}")
        if isinstance(value, Mapping) and isinstance(cfg[key], DictConfig):
            _check_keys(cfg[key], value, f"{where}.{key}")


def strategy_config(strategy: str, **params: Any) -> DictConfig:
    """conf/select/<strategy>.yaml with `params` merged over it, after checking every key exists."""
    path = SELECT_CONF_DIR / f"{strategy}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown selection strategy {strategy!r}: no {path}; available: {available_strategies()}"
        )
    cfg = compose_option("select", strategy, seed=int(params.get("seed", 42)))
    _check_keys(cfg, params, f"select[{strategy}] ({path})")
    cfg = OmegaConf.merge(cfg, OmegaConf.create(dict(params)))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"select[{strategy}]: required parameter(s) {missing} not set ({path} has ???)"
        )
    return cfg


def build_selector(strategy: str, **params: Any) -> Any:
    """Instantiate the component of conf/select/<strategy>.yaml with `params` overriding its keys."""
    return hydra.utils.instantiate(strategy_config(strategy, **params), _convert_="all")


def select_with_report(
    records: datasets.Dataset | list[dict[str, Any]], strategy: str, **params: Any
) -> Selection:
    """Run a selection strategy; the `Selection` holds the selected Dataset and the report."""
    return build_selector(strategy, **params)(as_dataset(records))


def select(records: datasets.Dataset | list[dict[str, Any]], strategy: str, **params: Any) -> Any:
    """Selected records with `loss_type` and `selected_by` added (list in, list out; Dataset in, Dataset out).

    Example: `select(records, "ppl_gaussian", n=50000, mu=2.5, sigma=0.25, max_per_prompt=1)`.
    """
    return like_input(select_with_report(records, strategy, **params).records, records)


def rank_teachers(
    records: datasets.Dataset | list[dict[str, Any]], **params: Any
) -> TeacherRanking:
    """Rank the teachers in `records` with conf/rank/teacher.yaml overridden by `params`."""
    cfg = compose_option("rank", "teacher", seed=int(params.get("seed", 42)))
    _check_keys(cfg, params, "rank[teacher] (conf/rank/teacher.yaml)")
    ranker: TeacherRanker = hydra.utils.instantiate(OmegaConf.merge(cfg, params), _convert_="all")
    return ranker(as_dataset(records))
