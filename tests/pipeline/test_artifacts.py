import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
from filelock import FileLock

from reasonft.io import read_records, write_records
from reasonft.pipeline.artifacts import META_FILE, ArtifactStore, content_key


def test_key_depends_on_config_and_inputs():
    a = content_key({"n": 1, "mu": 2.5}, {"score": "abc"})
    assert a == content_key({"mu": 2.5, "n": 1}, {"score": "abc"})  # key order does not matter
    assert a != content_key({"n": 2, "mu": 2.5}, {"score": "abc"})
    assert a != content_key({"n": 1, "mu": 2.5}, {"score": "abd"})


def test_build_once_then_reuse(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def produce(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"rows": 3}

    first = store.build("select", {"n": 1}, {}, produce)
    second = store.build("select", {"n": 1}, {}, produce)
    assert len(calls) == 1 and not first.reused and second.reused
    assert second.meta()["summary"] == {"rows": 3}
    assert (second.path / "out.txt").read_text() == "x"


def test_failed_stage_leaves_nothing_complete(tmp_path):
    store = ArtifactStore(tmp_path)

    def produce(d):
        (d / "half.parquet").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.build("score", {}, {}, produce)
    assert not list((tmp_path / "score").glob("[!.]*"))
    assert not list(tmp_path.rglob(META_FILE))


def test_killed_process_leaves_no_complete_artifact(tmp_path, caplog):
    """SIGKILL while a stage writes: the next run finds no artifact and builds it afresh."""
    script = textwrap.dedent(
        f"""
        import time
        from reasonft.pipeline.artifacts import ArtifactStore
        def produce(d):
            (d / "records.txt").write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
        ArtifactStore({str(tmp_path)!r}).build("score", {{}}, {{}}, produce)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ArtifactStore(tmp_path)
    assert not (store.path("score", content_key({}, {})) / META_FILE).exists()
    caplog.set_level("INFO", logger="reasonft.pipeline.artifacts")
    art = store.build("score", {}, {}, lambda d: (d / "records.txt").write_text("full") and None)
    assert not art.reused and (art.path / "records.txt").read_text() == "full"
    # The killed builder's lock died with it: the build took it at once, waiting for no one.
    assert "being built by another process" not in caplog.text
    assert not list((tmp_path / "score").glob(".tmp-*"))  # the killed build's folder is gone


def test_concurrent_builders_build_once_and_the_others_wait(tmp_path):
    """Two processes asking for the same artifact (tasks of one Slurm job, parallel sweep jobs):
    one builds it, the other waits for it and reuses it — nothing is built twice or replaced."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from reasonft.pipeline.artifacts import ArtifactStore
        def produce(d):
            with open({str(tmp_path / "calls.txt")!r}, "a") as f:
                f.write(sys.argv[1] + "\\n")
            print("building", flush=True)
            time.sleep(2)
            (d / "records.txt").write_text(sys.argv[1])
        art = ArtifactStore({str(tmp_path / "store")!r}).build("base", {{"n": 1}}, {{}}, produce)
        print("reused" if art.reused else "built", (art.path / "records.txt").read_text(), flush=True)
        """
    )
    first = subprocess.Popen(
        [sys.executable, "-c", script, "first"], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout.readline().strip() == "building"
    second = subprocess.Popen(
        [sys.executable, "-c", script, "second"], stdout=subprocess.PIPE, text=True
    )
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert out_first.strip() == "built first"
    assert out_second.strip() == "reused first"
    assert (tmp_path / "calls.txt").read_text() == "first\n"


# -- integrity: a reused artifact is verified, and rebuilt (with a warning) when it fails --------
def _records(n: int, path, tag: str = "") -> None:
    datasets.Dataset.from_dict(
        {"prompt_id": list(range(n)), "response": [f"{tag}r{i}" for i in range(n)]}
    ).to_parquet(str(path))


class _Stages:
    """An upstream `score` of 5,000 records and a downstream `select` that reads it."""

    def __init__(self, root, deterministic: bool = False):
        self.store = ArtifactStore(root)
        self.built: list[str] = []
        self.deterministic = deterministic

    def score(self):
        def produce(d):
            self.built.append("score")
            tag = "" if self.deterministic else f"build{self.built.count('score')}-"
            _records(5000, d / "records.parquet", tag)
            return {"records": 5000}

        return self.store.build("score", {"model": "m"}, {"verify": "v-key"}, produce)

    def select(self):
        upstream = self.score()

        def produce(d):
            self.built.append("select")
            pool = read_records(upstream.path / "records.parquet")
            write_records(pool.select(range(100)), d / "records.parquet")
            return {"records": 100}

        return self.store.build("select", {"n": 100}, {"score": upstream}, produce)


def test_replaced_records_with_fewer_rows_are_rebuilt_and_so_is_downstream(tmp_path, caplog):
    stages = _Stages(tmp_path)
    first = stages.select()
    score = stages.score()
    assert stages.built == ["score", "select"] and score.reused
    assert first.meta()["inputs"]["score"] == {"artifact": score.ref, "digest": score.digest}
    _records(1000, score.path / "records.parquet")  # a valid file with 1,000 of the 5,000 rows

    with caplog.at_level(logging.WARNING):
        rebuilt = stages.score()
    assert not rebuilt.reused and rebuilt.path == score.path and rebuilt.digest != score.digest
    assert len(read_records(rebuilt.path / "records.parquet")) == 5000
    assert f"artifact {score.path}: records.parquet has 1000 rows, built with 5000" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = stages.select()
    assert stages.built == ["score", "select", "score", "select"] and not second.reused
    assert (
        f"artifact {first.path}: input 'score' ({score.ref}) has digest {rebuilt.digest[:12]} now"
        in caplog.text
    )
    assert second.meta()["inputs"]["score"]["digest"] == rebuilt.digest
    third = stages.select()
    assert third.reused and stages.built.count("select") == 2


def test_truncated_records_are_rebuilt_never_a_wedge(tmp_path, caplog):
    stages = _Stages(tmp_path)
    stages.select()
    score = stages.score()
    data = (score.path / "records.parquet").read_bytes()
    (score.path / "records.parquet").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        selected = stages.select()
    assert f"artifact {score.path}: records.parquet has no readable parquet footer" in caplog.text
    assert not selected.reused and stages.built == ["score", "select", "score", "select"]
    assert len(read_records(score.path / "records.parquet")) == 5000
    assert stages.select().reused


def test_identical_rebuild_keeps_downstream(tmp_path, caplog):
    """A deterministic upstream rebuilt byte for byte has the same digest: downstream stays."""
    stages = _Stages(tmp_path, deterministic=True)
    stages.select()
    score = stages.score()
    (score.path / "records.parquet").unlink()
    with caplog.at_level(logging.WARNING):
        again = stages.select()
    assert f"artifact {score.path}: records.parquet is missing" in caplog.text
    assert again.reused and stages.built == ["score", "select", "score"]


def test_checksum_verification_sees_same_size_edits(tmp_path, caplog):
    def produce(d):
        (d / "report.json").write_text('{"n": 1}')

    def build(store):
        return store.build("verify", {}, {}, produce)

    art = build(ArtifactStore(tmp_path))
    stat = (art.path / "report.json").stat()
    (art.path / "report.json").write_text('{"n": 7}')
    os.utime(art.path / "report.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert build(ArtifactStore(tmp_path)).reused  # "size": same size, same mtime
    with caplog.at_level(logging.WARNING):
        again = build(ArtifactStore(tmp_path, verify="checksum"))
    assert not again.reused and "report.json has other content" in caplog.text
    assert (again.path / "report.json").read_text() == '{"n": 1}'
    with pytest.raises(ValueError, match="verify='sha'"):
        ArtifactStore(tmp_path, verify="sha")


@pytest.mark.parametrize("damage", ["old_format", "garbage", "no_meta"])
def test_artifact_without_a_readable_manifest_is_rebuilt(tmp_path, caplog, damage):
    store = ArtifactStore(tmp_path)
    art = store.build("verify", {}, {}, lambda d: (d / "a.txt").write_text("a") and None)
    meta = art.path / META_FILE
    if damage == "old_format":
        meta.write_text(json.dumps({k: v for k, v in art.meta().items() if k != "manifest"}))
    elif damage == "garbage":
        meta.write_text("{not json")
    else:
        meta.unlink()
    with caplog.at_level(logging.WARNING):
        again = store.build("verify", {}, {}, lambda d: (d / "a.txt").write_text("b") and None)
    assert not again.reused and (again.path / "a.txt").read_text() == "b"
    assert f"artifact {art.path}:" in caplog.text


def test_files_added_to_an_artifact_are_reported_not_used_to_rebuild(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    art = store.build("verify", {}, {}, lambda d: (d / "a.txt").write_text("a") and None)
    (art.path / "notes.md").write_text("mine")
    with caplog.at_level(logging.WARNING):
        assert store.build("verify", {}, {}, lambda d: None).reused
    assert "notes.md" in caplog.text


def test_summary_points_at_the_final_folder(tmp_path):
    store = ArtifactStore(tmp_path)

    def produce(d):
        (d / "model").mkdir()
        (d / "model" / "w.bin").write_bytes(b"w")
        return {
            "model": d / "model",
            "plot": str(d / "p.png"),
            "mean": np.float32(0.5),
            "n": np.int64(3),
        }

    art = store.build("train", {}, {}, produce)
    assert ".tmp-" not in str(art.path) and art.path == store.path("train", art.key)
    summary = art.meta()["summary"]
    assert summary == {
        "model": str(art.path / "model"),
        "plot": str(art.path / "p.png"),
        "mean": 0.5,
        "n": 3,
    }
    assert Path(summary["model"], "w.bin").read_bytes() == b"w"


# -- killed builds: their temporary folders are removed --------------------------------------------
def test_stale_temp_folders_are_removed_by_the_next_builder_of_their_key(tmp_path):
    store = ArtifactStore(tmp_path)
    key = content_key({"n": 1}, {})
    stale = [tmp_path / "score" / f".tmp-{key}-{tag}" for tag in ("0badf00d", "deadbeef")]
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "records.parquet").write_text("partial")
    other = tmp_path / "score" / ".tmp-ffffffffffffffff-12345678"
    other.mkdir()
    art = store.build("score", {"n": 1}, {}, lambda d: (d / "a.txt").write_text("a") and None)
    assert not any(f.exists() for f in stale) and other.exists()  # another key's: not this lock's
    assert art.path.is_dir()


def test_clean_stale_removes_temp_folders_whose_lock_is_free(tmp_path):
    store = ArtifactStore(tmp_path)
    kept = store.build("score", {"n": 1}, {}, lambda d: (d / "a.txt").write_text("a") and None)
    idle = [
        tmp_path / "score" / ".tmp-aaaaaaaaaaaaaaaa-0badf00d",
        tmp_path / "train" / ".tmp-bbbbbbbbbbbbbbbb-deadbeef",
    ]
    for folder in idle:
        folder.mkdir(parents=True)
        (folder / "half.bin").write_bytes(b"x")
    busy = tmp_path / "score" / ".tmp-cccccccccccccccc-12345678"
    busy.mkdir()
    unrelated = [
        tmp_path / "score" / ".tmp-notes",
        tmp_path / "score" / "cccccccccccccccc.checkpoints",
    ]
    for folder in unrelated:
        folder.mkdir()
    held = FileLock(str(tmp_path / "score" / ".cccccccccccccccc.lock"))
    held.acquire()  # a build of that key is running (in this test: this process)
    try:
        removed = store.clean_stale()
    finally:
        held.release()
    assert sorted(removed) == sorted(idle) and not any(f.exists() for f in idle)
    assert busy.exists() and all(f.exists() for f in unrelated)
    assert store.build("score", {"n": 1}, {}, lambda d: None).reused and kept.path.is_dir()
    assert ArtifactStore(tmp_path / "never-made").clean_stale() == []


def test_killed_build_leaves_a_temp_folder_tied_to_its_key_that_start_up_removes(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from reasonft.pipeline.artifacts import ArtifactStore
        def produce(d):
            (d / "records.txt").write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
        ArtifactStore({str(tmp_path)!r}).build("score", {{"n": 2}}, {{}}, produce)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    key = content_key({"n": 2}, {})
    (left,) = (tmp_path / "score").glob(f".tmp-{key}-*")
    assert ArtifactStore(tmp_path).clean_stale() == []  # its builder still holds the lock
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ArtifactStore(tmp_path).clean_stale() == [left] and not left.exists()
