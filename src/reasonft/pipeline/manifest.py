"""What a completed artifact holds, and whether it still holds it.

The manifest lists every file of the artifact folder (hidden ones included; the metadata file
itself excepted) with its relative path, size, mtime_ns and a SHA-256, and for `*.parquet` the
row count from the file's footer.

Checksum policy: a file of at most `FULL_HASH_LIMIT` bytes (256 MiB) is hashed whole. A larger
file (model weights: written once by `save_pretrained`, several GB) is hashed over its size,
its first and its last `EDGE_BYTES` (1 MiB each), marked `"hashed": "head+tail"`: hashing a
15 GB checkpoint whole costs tens of seconds at every build and every checksum verification,
while truncation, replacement by another checkpoint (a safetensors header, at the head, holds
every tensor's name, shape and offset) and a partial write (the tail) all change size, head or
tail. A bit flipped in the middle of such a file goes unnoticed.

Verification (`problems`) has two levels. "size": every file exists with its size, parquet
footers are readable with the recorded row counts, and a file whose mtime changed is re-hashed
(an in-place overwrite of the same size is caught; a file merely touched passes). "checksum":
every file is re-hashed.

The digest hashes the entries without their mtimes, so an identical rebuild has the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

FULL_HASH_LIMIT = 256 * 2**20
EDGE_BYTES = 2**20
VERIFY_LEVELS = ("size", "checksum")
Verify = Literal["size", "checksum"]


def file_checksum(path: Path, size: int) -> tuple[str, str]:
    """(how it was hashed, SHA-256 hex) under the policy of this module."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return "full", digest.hexdigest()
        digest.update(str(size).encode())
        digest.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        digest.update(f.read(EDGE_BYTES))
        return "head+tail", digest.hexdigest()


def parquet_rows(path: Path) -> int:
    """The row count in a Parquet file's footer (reads the footer only)."""
    return pq.ParquetFile(path).metadata.num_rows


def build_manifest(folder: Path, exclude: str) -> list[dict[str, Any]]:
    """One entry per file under `folder` (sorted by path), except `folder / exclude`."""
    entries = []
    for rel in _files(folder):
        if rel == exclude:
            continue
        path = folder / rel
        stat = path.stat()
        how, sha = file_checksum(path, stat.st_size)
        entry: dict[str, Any] = {
            "path": rel,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "hashed": how,
            "sha256": sha,
        }
        if rel.endswith(".parquet"):
            try:
                entry["rows"] = parquet_rows(path)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(
                    f"{path}: named .parquet but not a readable Parquet file ({err})"
                ) from err
        entries.append(entry)
    return entries


def manifest_digest(manifest: list[dict[str, Any]]) -> str:
    content = [{k: v for k, v in entry.items() if k != "mtime_ns"} for entry in manifest]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def problems(folder: Path, manifest: list[dict[str, Any]], verify: Verify) -> list[str]:
    """Why `folder` no longer holds what `manifest` lists (empty when it does)."""
    found = []
    for entry in manifest:
        rel, path = entry["path"], folder / entry["path"]
        try:
            stat = path.stat()
        except FileNotFoundError:
            found.append(f"{rel} is missing")
            continue
        if "rows" in entry:
            try:
                rows = parquet_rows(path)
            except (pa.ArrowException, OSError) as err:
                found.append(f"{rel} has no readable parquet footer ({type(err).__name__}: {err})")
                continue
            if rows != entry["rows"]:
                found.append(f"{rel} has {rows} rows, built with {entry['rows']}")
                continue
        if stat.st_size != entry["size"]:
            found.append(f"{rel} has {stat.st_size} bytes, built with {entry['size']}")
            continue
        rehash = verify == "checksum" or stat.st_mtime_ns != entry["mtime_ns"]
        if rehash and file_checksum(path, stat.st_size)[1] != entry["sha256"]:
            found.append(
                f"{rel} has other content (SHA-256 differs from the one it was built with)"
            )
    return found


def unlisted_files(folder: Path, manifest: list[dict[str, Any]], exclude: str) -> list[str]:
    listed = {entry["path"] for entry in manifest} | {exclude}
    return [rel for rel in _files(folder) if rel not in listed]


def _files(folder: Path) -> list[str]:
    names = []
    for root, _, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        names.extend(str(rel_root / f) if str(rel_root) != "." else f for f in files)
    return sorted(names)
