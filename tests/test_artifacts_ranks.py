"""What ranks > 0 of a multi-process stage use: `find` (is it complete now, without a lock) and
`wait_for` (wait for the builder's lock, reuse its artifact, never build)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from reasonft.pipeline.artifacts import ArtifactStore


def _produce(d):
    (d / "records.txt").write_text("rank 0")
    return {"records": 1}


def test_find_sees_only_a_complete_verified_artifact_and_removes_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.find("score", {"n": 1}, {}) is None
    built = store.build("score", {"n": 1}, {}, _produce)
    found = store.find("score", {"n": 1}, {})
    assert found is not None and found.path == built.path and found.digest == built.digest
    assert store.find("score", {"n": 2}, {}) is None
    (built.path / "records.txt").write_text("damaged, another size")
    assert store.find("score", {"n": 1}, {}) is None
    assert (built.path / "records.txt").exists()  # only its builder may remove it


def test_wait_for_waits_for_the_builders_lock_and_never_builds(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from reasonft.pipeline.artifacts import ArtifactStore
        def produce(d):
            print("building", flush=True)
            time.sleep(2)
            (d / "records.txt").write_text("rank 0")
        ArtifactStore({str(tmp_path)!r}).build("score", {{"n": 1}}, {{}}, produce)
        """
    )
    builder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline().strip() == "building"
    store = ArtifactStore(tmp_path)
    assert store.find("score", {"n": 1}, {}) is None  # still being built
    artifact = store.wait_for("score", {"n": 1}, {})
    builder.communicate(timeout=60)
    assert artifact.reused and (artifact.path / "records.txt").read_text() == "rank 0"


def test_wait_for_raises_when_the_builder_left_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="rank 0"):
        ArtifactStore(tmp_path).wait_for("score", {"n": 1}, {})
    left = [p.name for p in (tmp_path / "score").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # nothing was built
