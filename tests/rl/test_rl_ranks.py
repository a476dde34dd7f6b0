"""The rl stage on two CPU processes: torchrun starts them (the way start-up names for
strategy=ddp trainer.devices=2), each a rank of TRL's GRPOTrainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=32", "model.build.intermediate_size=64",
    "rl.prompts_per_step=2", "rl.samples_per_prompt=4", "rl.micro_batch_size=4",
    "rl.max_response_tokens=24", "rl.max_steps=2", "rl.save_every_n_steps=1",
    "rl.validation.every_n_steps=0", "rl.validation.evaluator.benchmarks.toy_validation.limit=2",
    "rl.validation.evaluator.benchmarks.toy_validation.n_samples=2", "rl.validation.evaluator.ks=[1,2]",
    "rl.validation.evaluator.generator.max_new_tokens=16", "callbacks.progress_bar=null",
]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_torchrun_processes_run_one_grpo(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "run.py"),
        "stages=[rl,report]", "strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", *TINY,
    ]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "cache" / "artifacts" / "rl").glob("*[0-9a-f]")
    report = json.loads((folder / "rl_report.json").read_text())
    assert report["processes"] == 2
    assert report["steps"] == 2
    # every rank's rollouts are counted: 2 steps x 2 prompts x 4 samples
    assert report["rewards"]["rollouts"] == 16
    assert (folder / "model" / "config.json").exists()
