"""bench/toy_tables.py, the one command behind the README's toy tables, at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reasonft.config import PROJECT_ROOT

TINY = [
    "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=32", "model.build.intermediate_size=64", "generate.n=2",
    "generate.max_new_tokens=40", "verify.workers=1", "eval.benchmarks.toy_test.n_samples=8",
    "eval.benchmarks.toy_test.limit=2", "eval.benchmarks.toy_test_greedy.limit=2",
    "eval.generator.max_new_tokens=30", "eval.heldout_entropy.limit=2", "train.micro_batch_size=2",
    "train.per_step.ce=2", "callbacks.progress_bar=null",
    "trainer.max_epochs=1",
]


@pytest.mark.slow
def test_toy_tables_prints_the_recipe_table(tmp_path):
    out = tmp_path / "tables.json"
    args = [sys.executable, "bench/toy_tables.py", "--build-seeds", "0", "1", "--recipes", "toy_sft", "--lambdas", "--out", str(out)]
    for override in TINY:
        args += ["--set", override]
    env = {"REASONFT_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, check=False, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| toy_sft |" in done.stdout and " ± " in done.stdout
    saved = json.loads(out.read_text())
    assert set(saved["recipes"]) == {"base student", "toy_sft"}
    assert all(len(v) == 2 for v in saved["recipes"].values())


@pytest.mark.slow
def test_toy_spread_builds_on_another_kernel_path_and_measures(tmp_path):
    """bench/toy_spread.py (the README's base-robustness figures) end to end at tiny sizes, on
    a kernel path below this CPU's own, in its own process: it once failed before building
    anything. Which path that is depends on the CPU (no instruction set is assumed)."""
    import torch

    native = torch.backends.cpu.get_cpu_capability()
    asked = {"AVX512": "avx2", "AVX2": "default"}.get(native)
    if asked is None:
        pytest.skip(f"this CPU's kernel path ({native}) has no lower one to ask for")
    out = tmp_path / "spread.json"
    args = [sys.executable, "bench/toy_spread.py", "--seeds", "0", "--capabilities", asked,
            "--cache", str(tmp_path / "cache"), "--out", str(out)]
    for change in ("steps=5", "n_pretrain=40", "vocab_size=400", "hidden_size=32",
                   "intermediate_size=64", "num_heads=4", "num_kv_heads=2"):
        args += ["--set", change]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, check=False, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads(out.read_text())
    (row,) = saved["rows"]
    assert row["asked_capability"] == asked and row["capability"] != native
    assert 0.0 <= row["accuracy"] <= 1.0 and saved["summary"]["n"] == 1
