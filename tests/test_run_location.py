"""A run writes where it is started, never into the checkout that holds run.py (nor into an
installed package): `python /a/clone/run.py` from folder X puts its run folder and the default
cache under X, and reads its configs from the package. The run folder is named by the chosen
experiment (task_name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reasonft.config import CONF_DIR, PROJECT_ROOT


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".git" not in p.parts and "__pycache__" not in p.parts}


def test_run_py_from_another_folder_writes_there_and_nowhere_in_the_source_tree(tmp_path):
    assert CONF_DIR == PROJECT_ROOT / "src" / "reasonft" / "conf"  # the package's, in a checkout
    source = [PROJECT_ROOT / "run.py", PROJECT_ROOT / "src"]
    before = set().union(*(_files(p) if p.is_dir() else {p} for p in source))
    env = {k: v for k, v in os.environ.items() if k not in ("REASONFT_CACHE", "REASONFT_BENCHMARKS")}
    env |= {"PYTHONPATH": str(PROJECT_ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), "stages=[report]", "experiment=toy_sft"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["toy_sft"]  # the experiment's name
    runs = list((tmp_path / "outputs" / "toy_sft").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "results.json").read_text())["task_name"] == "toy_sft"
    assert (tmp_path / ".cache" / "reasonft" / "artifacts").is_dir()  # the default cache
    after = set().union(*(_files(p) if p.is_dir() else {p} for p in source))
    assert after == before, sorted(map(str, after ^ before))[:10]
    assert not (PROJECT_ROOT / "outputs" / "toy_sft" / runs[0].name).exists()  # (a random suffix)
