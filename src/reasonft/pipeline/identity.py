"""What an artifact key sees: fully resolved plain values, and the identity of files on disk.

A key must change whenever what a stage reads changes, so everything it hashes is reduced to
plain JSON data first: OmegaConf nodes anywhere inside dicts, lists and tuples are resolved
against their root (`seed: ${seed}` hashes the run's seed, not the text `${seed}`), and a value
that cannot be reduced (an object, an unresolvable interpolation, a missing `???`) is an error
naming where it sits — never its `str()`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

# A Hugging Face Hub repository id: `name` or `owner/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolved_plain(value: Any, where: str = "config") -> Any:
    """`value` as plain JSON data (dict with str keys, list, str, int, float, bool, None).

    `where` names the value in error messages (`config.generate.seed`).
    """
    if isinstance(value, DictConfig):
        if value._is_missing():
            raise ValueError(f"{where}: is '???' (mandatory, not set); give it a value")
        if value._is_none():
            return None
        return {
            _plain_key(key, where): resolved_plain(
                _child(value, key, f"{where}.{key}"), f"{where}.{key}"
            )
            for key in value
        }
    if isinstance(value, ListConfig):
        if value._is_missing():
            raise ValueError(f"{where}: is '???' (mandatory, not set); give it a value")
        if value._is_none():
            return None
        return [
            resolved_plain(_child(value, i, f"{where}[{i}]"), f"{where}[{i}]")
            for i in range(len(value))
        ]
    if isinstance(value, Mapping):
        return {_plain_key(k, where): resolved_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolved_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not JSON data; use a finite number or null")
        return value
    raise TypeError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} is not plain JSON data; "
        "pass what identifies it (its config values, a path identity) instead of the object"
    )


def _plain_key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; keys must be strings")
    return key


def _child(node: DictConfig | ListConfig, key: str | int, where: str) -> Any:
    """`node[key]`, resolved against the node's root."""
    try:
        return node[key]
    except MissingMandatoryValue:
        raise ValueError(f"{where}: is '???' (mandatory, not set); give it a value") from None
    except OmegaConfBaseException as err:
        raise ValueError(f"{where}: cannot be resolved ({type(err).__name__}: {err})") from None


def path_identity(path: str | Path) -> dict[str, Any]:
    """What a model or data path holds, as seen by artifact keys, without reading any file.

    A local file or folder: its absolute path and, for every file under it (hidden ones and
    symlink targets included, sorted by relative name), `[relative name, size, mtime_ns]`; a
    file overwritten in place changes the identity. A name that is not a local path is a Hub
    id: `{"name": ..., "local": False}` (its revision is the caller's to pin). Only `stat` is
    called, so a 15 GB checkpoint folder costs one system call per file.
    """
    local = Path(path).expanduser()
    if local.exists():
        local = local.resolve()
        if local.is_file():
            return {"name": str(local), "local": True, "files": [_file_entry(local, local.name)]}
        files = [_file_entry(local / rel, rel) for rel in _relative_files(local)]
        return {"name": str(local), "local": True, "files": files}
    if os.path.lexists(local):
        raise FileNotFoundError(f"{path}: a symlink to a missing target ({os.readlink(local)})")
    text = str(path)
    if not _HUB_ID.match(text):
        raise FileNotFoundError(f"{path}: no such file or folder, and not a Hub id (owner/name)")
    return {"name": text, "local": False}


def _relative_files(folder: Path) -> list[str]:
    names = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop: this folder is listed already
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        rel_root = Path(root).relative_to(folder)
        names.extend(str(rel_root / f) if str(rel_root) != "." else f for f in files)
    return sorted(names)


def _file_entry(path: Path, rel: str) -> list[Any]:
    try:
        stat = path.stat()  # follows symlinks: a Hub cache snapshot links to its blobs
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: a symlink to a missing target ({os.readlink(path)})"
        ) from None
    return [rel, stat.st_size, stat.st_mtime_ns]
