"""Building a stage's components from its config slice, with errors that name the config key."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from reasonft.data.records import SCORE_COLUMNS


def build(key: str, node: Any, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`, an error naming the config key when it fails."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        raise ValueError(f"{key}: {err}") from err
    except (TypeError, ValueError) as err:
        raise type(err)(f"{key}: {err}") from err


def required_scores(consumer: Any) -> tuple[str, ...]:
    """The score columns a selector or ranker reads (empty: it reads the verified pool as is)."""
    return tuple(c for c in SCORE_COLUMNS if c in consumer.requires)


def check_importable(cfg: DictConfig, group: str) -> None:
    """Each `_target_` of a mapping group (logger, callbacks) imports, without building it (a
    logger creates files and runs when built)."""
    for name, node in (cfg.get(group) or {}).items():
        if node and "_target_" in node:
            try:
                get_class(node._target_)
            except Exception as err:
                raise ValueError(f"{group}.{name}._target_={node._target_!r}: {err}") from err
