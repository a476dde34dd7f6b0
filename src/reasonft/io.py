"""Crash-safe artifact writing: everything goes to a temporary name and is renamed when complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

TMP_PREFIX = ".tmp-"
_TMP_TAG = re.compile(r"^[0-9a-f]{8}$")


def temp_name(final: str | Path) -> Path:
    """A fresh temporary sibling of `final`: `.tmp-<final's name>-<8 hex digits>`."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")


def temp_target(tmp: Path) -> Path | None:
    """The final path a name made by `temp_name` stands for (None for any other name)."""
    name = tmp.name
    stem, dash, tag = name[len(TMP_PREFIX) :].rpartition("-")
    if not name.startswith(TMP_PREFIX) or not dash or not stem or not _TMP_TAG.match(tag):
        return None
    return tmp.with_name(stem)


def temp_siblings(final: str | Path) -> list[Path]:
    """The temporary siblings of `final` left by `atomic_path` (by a killed process, or in use)."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if temp_target(p) == final)


def remove_path(path: Path) -> None:
    """Remove a file or folder tree (nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path (file or folder); rename it to `final` only on success.

    A crash or exception leaves at most a `.tmp-<name>-<8 hex>` sibling (`temp_siblings`
    finds it), never something at `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        remove_path(tmp)


def write_json(obj: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_records(ds: datasets.Dataset, path: str | Path) -> Path:
    """Write records as Parquet (`.parquet`) or JSON lines (`.jsonl`), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            ds.to_parquet(str(tmp))
        elif path.suffix == ".jsonl":
            ds.to_json(str(tmp), lines=True, force_ascii=False)
        else:
            raise ValueError(f"{path}: records are written as .parquet or .jsonl")
    return path


def read_records(path: str | Path) -> datasets.Dataset:
    """Read records written by `write_records` (no field mapping; see data.loaders for that)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if path.suffix == ".jsonl":
        return datasets.Dataset.from_json(str(path))
    raise ValueError(f"{path}: records are read from .parquet or .jsonl")
