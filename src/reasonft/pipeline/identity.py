"""The identity of a model checkpoint as artifact keys see it: its files, not only its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def path_identity(path: str | Path) -> dict[str, Any]:
    """Every file's relative name, size and mtime_ns for a local folder or file; a name that is
    not a local path (a hub id) is its own identity."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        return {"name": str(path), "local": False}
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    root = p.parent if p.is_file() else p
    return {
        "name": str(p.resolve()),
        "local": True,
        "files": [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }
