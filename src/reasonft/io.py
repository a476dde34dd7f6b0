"""Crash-safe artifact writing: everything goes to a temporary name and is renamed when complete."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path (file or folder); rename it to `final` only on success.

    A crash or exception leaves at most a `.tmp-*` sibling, never something at `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


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
