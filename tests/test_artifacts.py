import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

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


def test_killed_process_leaves_no_complete_artifact(tmp_path):
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
    start = time.perf_counter()
    art = store.build("score", {}, {}, lambda d: (d / "records.txt").write_text("full") and None)
    assert not art.reused and (art.path / "records.txt").read_text() == "full"
    assert time.perf_counter() - start < 5


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
    first = subprocess.Popen([sys.executable, "-c", script, "first"], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "building"
    second = subprocess.Popen([sys.executable, "-c", script, "second"], stdout=subprocess.PIPE, text=True)
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert out_first.strip() == "built first"
    assert out_second.strip() == "reused first"
    assert (tmp_path / "calls.txt").read_text() == "first\n"
