"""The manifest of a completed artifact: checksums, parquet row counts, digest, verification."""

import hashlib
import json
import os

import datasets
import pyarrow.parquet as pq
import pytest

from reasonft.pipeline import manifest
from reasonft.pipeline.manifest import build_manifest, manifest_digest, problems


def _records(n: int, path) -> None:
    datasets.Dataset.from_dict(
        {"prompt_id": list(range(n)), "response": [f"r{i}" for i in range(n)]}
    ).to_parquet(str(path))


def _reference_checksum(path, limit: int, edge: int) -> str:
    data = path.read_bytes()
    if len(data) <= limit:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(str(len(data)).encode() + data[:edge] + data[-edge:]).hexdigest()


def test_manifest_entries_match_a_plain_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "FULL_HASH_LIMIT", 4096)
    monkeypatch.setattr(manifest, "EDGE_BYTES", 100)
    (tmp_path / "sub").mkdir()
    _records(37, tmp_path / "records.parquet")
    (tmp_path / "sub" / "weights.bin").write_bytes(os.urandom(10_000))  # over the (patched) limit
    (tmp_path / ".hidden").write_text("h")
    (tmp_path / "artifact.json").write_text("{}")
    entries = build_manifest(tmp_path, exclude="artifact.json")
    assert [e["path"] for e in entries] == [".hidden", "records.parquet", "sub/weights.bin"]
    for entry in entries:
        path = tmp_path / entry["path"]
        assert entry["size"] == path.stat().st_size and entry["mtime_ns"] == path.stat().st_mtime_ns
        assert entry["sha256"] == _reference_checksum(path, 4096, 100)
    assert [e["hashed"] for e in entries] == ["full", "full", "head+tail"]
    assert entries[1]["rows"] == len(pq.read_table(tmp_path / "records.parquet")) == 37
    assert "rows" not in entries[0] and "rows" not in entries[2]


def test_digest_hashes_the_entries_without_mtimes(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    entries = build_manifest(tmp_path, exclude="artifact.json")
    reference = hashlib.sha256(
        json.dumps(
            [{k: v for k, v in e.items() if k != "mtime_ns"} for e in entries], sort_keys=True
        ).encode()
    ).hexdigest()
    assert manifest_digest(entries) == reference
    touched = [{**e, "mtime_ns": e["mtime_ns"] + 5} for e in entries]
    assert manifest_digest(touched) == manifest_digest(entries)
    (tmp_path / "a.txt").write_text("b")
    assert manifest_digest(build_manifest(tmp_path, exclude="artifact.json")) != manifest_digest(
        entries
    )


def test_a_file_named_parquet_that_is_not_parquet_fails_the_build(tmp_path):
    (tmp_path / "records.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="records.parquet"):
        build_manifest(tmp_path, exclude="artifact.json")


def test_problems_by_verify_level(tmp_path):
    _records(50, tmp_path / "records.parquet")
    (tmp_path / "notes.txt").write_text("abcdef")
    entries = build_manifest(tmp_path, exclude="artifact.json")
    assert problems(tmp_path, entries, "size") == problems(tmp_path, entries, "checksum") == []

    # Same size, same mtime, other bytes: only a re-hash sees it.
    notes = tmp_path / "notes.txt"
    stat = notes.stat()
    notes.write_text("abcdeX")
    os.utime(notes, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert problems(tmp_path, entries, "size") == []
    assert problems(tmp_path, entries, "checksum") == [
        "notes.txt has other content (SHA-256 differs from the one it was built with)"
    ]
    # Same size, new mtime (an overwrite): re-hashed at the "size" level too.
    os.utime(notes, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert len(problems(tmp_path, entries, "size")) == 1
    notes.write_text("abcdef")
    os.utime(notes, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert problems(tmp_path, entries, "size") == []  # touched, same content

    _records(10, tmp_path / "records.parquet")
    assert problems(tmp_path, entries, "size") == ["records.parquet has 10 rows, built with 50"]
    data = (tmp_path / "records.parquet").read_bytes()
    (tmp_path / "records.parquet").write_bytes(data[: len(data) // 2])
    (found,) = problems(tmp_path, entries, "size")
    assert found.startswith("records.parquet has no readable parquet footer")
    (tmp_path / "records.parquet").unlink()
    assert problems(tmp_path, entries, "size") == ["records.parquet is missing"]
    notes.write_text("longer than before")
    assert "notes.txt has 18 bytes, built with 6" in problems(tmp_path, entries, "size")
