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
            (d / "records.parquet").write_text("partial")
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
    art = store.build("score", {}, {}, lambda d: (d / "records.parquet").write_text("full") and None)
    assert not art.reused and (art.path / "records.parquet").read_text() == "full"
    assert time.perf_counter() - start < 5
