"""`python run.py` on 2 CPU processes (gloo, `strategy=ddp trainer.devices=2`) gives the generate
and score stages' records of 1 process, each rank doing its share; ranks > 0 (re-launched by
Lightning at the first `trainer.predict`) take part in rank 0's builds, reuse what rank 0 wrote
and leave nothing behind.

Three runs of the miniature toy world share one cache (the base student is built once):
1. one process builds base, generate, verify (teacher pool) and score;
2. two processes, given run 1's base and verify artifacts, build generate and score — rank 1 is
   launched by generate's predict;
3. two processes, given run 1's base, generate and verify, build score only — rank 1 is launched
   by score's predict and must reuse generate (complete) rather than wait in a collective.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reasonft.io import read_records

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.source.n_train=6",
    "data.source.n_test=4",
    "data.source.max_ops=2",
    "model.build.steps=10",
    "model.build.n_pretrain=200",
    "model.build.vocab_size=400",
    "model.build.hidden_size=32",
    "model.build.intermediate_size=64",
    "generate.n=3",
    "generate.max_new_tokens=40",
    "generate.batch_size=5",  # batches differ between 1 and 2 processes; the samples must not
    "generate.progress=false",
    "score.progress=false",
    "verify.workers=1",
    "logger=none",
    "callbacks.progress_bar=null",
    "trainer.accelerator=cpu",
    "stages=[generate,score]",
]
TWO_PROCESSES = ["trainer.devices=2", "strategy=ddp"]
SCORE_COLUMNS = ("ppl", "galp")


def _run(tmp_path: Path, name: str, *extra: str) -> Path:
    """Run run.py with artifacts in `tmp_path/name`; returns that folder."""
    artifacts, run_dir = tmp_path / name, tmp_path / f"{name}-run"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    for launcher_variable in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "SLURM_PROCID"):
        env.pop(launcher_variable, None)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "run.py"), *TINY, *extra,
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.artifacts_dir={artifacts}",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return artifacts


def _only(artifacts: Path, stage: str) -> Path:
    folders = list((artifacts / stage).iterdir())
    visible = [f for f in folders if not f.name.startswith(".")]
    assert len(visible) == 1, f"{stage}: {sorted(f.name for f in folders)}"
    return visible[0]


def _records(artifacts: Path, stage: str) -> list[dict]:
    return read_records(_only(artifacts, stage) / "records.parquet").to_list()


def _summary(artifacts: Path, stage: str) -> dict:
    return json.loads((_only(artifacts, stage) / "artifact.json").read_text())["summary"]


def _copy(src: Path, dst: Path, *stages: str) -> None:
    for stage in stages:
        shutil.copytree(src / stage, dst / stage)  # copy2: times kept, so reuse verifies


def _same_scores(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        plain = {k: v for k, v in b.items() if k not in SCORE_COLUMNS}
        assert {k: a[k] for k in plain} == plain
        for key in SCORE_COLUMNS:
            # Other batches, other padding: float32 rounding differs, nothing else.
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def _rank_logs(tmp_path: Path, name: str) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp_path / f"{name}-run").glob("*.log")))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_generate_and_score_the_records_of_one(tmp_path):
    one = _run(tmp_path, "one")
    assert _summary(one, "generate")["processes"] == 1
    samples, scored = _records(one, "generate"), _records(one, "score")
    assert len(samples) == 6 * 3 and len({r["response"] for r in samples}) > 1

    two = tmp_path / "two"
    _copy(one, two, "base", "verify")
    _run(tmp_path, "two", *TWO_PROCESSES)
    assert _records(two, "generate") == samples
    _same_scores(_records(two, "score"), scored)
    assert _summary(two, "generate")["processes"] == 2
    assert _summary(two, "score")["processes"] == 2
    assert _summary(two, "score")["records"] == _summary(one, "score")["records"]
    # Each rank sampled its half of the problems (3 of 6, 3 samples each).
    assert _rank_logs(tmp_path, "two").count("generated 9 samples") == 2
    # Rank 1 was launched once (by generate's predict): score's Trainer reused the process group.
    assert _rank_logs(tmp_path, "two").count("plan: ") == 2
    for stage in ("generate", "score"):  # one artifact, no shards or temporary folder left
        assert sorted(p.name for p in (two / stage).iterdir() if not p.name.endswith(".lock")) == [
            _only(two, stage).name
        ]

    later = tmp_path / "later"
    _copy(one, later, "base", "generate", "verify")
    _run(tmp_path, "later", *TWO_PROCESSES)
    _same_scores(_records(later, "score"), scored)
    assert _summary(later, "score")["processes"] == 2
    assert "generated" not in _rank_logs(tmp_path, "later")  # nobody sampled again
