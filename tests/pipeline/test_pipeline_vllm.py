"""The pipeline with vLLM for real (vLLM's CPU build, `make test-vllm`), through `run.py` in a
process of its own, as a user runs it (vLLM's engine core starts in a spawned process, which
re-imports the calling script: run.py's `__main__` guard): the base student's self-samples with
`generate=vllm`, and an evaluation whose generator is vLLM, on the toy world and on the OXA
benchmarks (`eval=oxa6`, one problem each), at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, needs_shared

from reasonft.config import PROJECT_ROOT
from reasonft.io import read_records

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# A tiny toy world and student whose heads (64 / 2 = 32) vLLM's CPU attention takes.
TINY = [
    "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=64", "model.build.num_heads=2", "model.build.num_kv_heads=1",
    "model.build.intermediate_size=128", "verify.workers=1", "logger=none",
    "callbacks.progress_bar=null",
]
# One engine setting for self-sampling and evaluation: the run starts one engine, not two.
ENGINE = ["kv_cache_memory_gib=0.25", "enforce_eager=true", "batch_size=32", "progress=false"]


def run_py(overrides: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REASONFT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, str(PROJECT_ROOT / "run.py"), *overrides,
               f"hydra.run.dir={tmp_path}/run"]
    try:
        # Under make test-vllm's per-test timeout (900 s), so that a stuck run shows its own log.
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=840, check=False)
    except subprocess.TimeoutExpired as stuck:
        out, err = (_text(stuck.stdout), _text(stuck.stderr))
        pytest.fail(f"run.py did not finish in {stuck.timeout} s:\n{out[-3000:]}{err[-6000:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def test_self_samples_and_evaluation_with_vllm(tmp_path):
    overrides = [
        "stages=[select,evaluate,report]", *TINY,
        "generate=vllm", "generate.n=2", "generate.max_new_tokens=40",
        *[f"generate.{o}" for o in ENGINE],
        "generate@eval.generator=vllm", "eval.generator.max_new_tokens=40",
        *[f"eval.generator.{o}" for o in ENGINE],
        "eval.benchmarks.toy_test.n_samples=2", "eval.benchmarks.toy_test.limit=4",
        "eval.benchmarks.toy_test_greedy.limit=4", "eval.ks=[1,2]", "eval.heldout_entropy.limit=4",
    ]
    done = run_py(overrides, tmp_path)
    # Self-sampling and the evaluation of the same student shared one engine.
    assert (done.stdout + done.stderr).count("Initializing a V1 LLM engine") == 1
    [records] = (tmp_path / "cache" / "artifacts" / "generate").glob("*/records.parquet")
    samples = read_records(records)
    assert len(samples) == 2 * 24 and set(samples["source"]) == {"self"}
    assert sorted(set(samples["sample_idx"])) == [0, 1]
    assert all(0 <= t <= 40 for t in samples["gen_tokens"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    text = json.dumps(results)
    assert "VLLMGenerator" in text
    assert "toy_test_greedy" in text and "toy_test" in text


@needs_shared(BENCHMARKS)
def test_oxa6_evaluation_with_vllm_at_tiny_sizes(tmp_path):
    """The six OXA benchmarks, one problem and two samples each, on a tiny toy student (its
    tokenizer has none of Qwen's stop ids: <|im_end|> by name instead) with a longer context."""
    benchmarks = ["AIME24", "AIME25", "HMMT25", "CMIMC25", "BRUMO25", "Minerva"]
    overrides = [
        "stages=[evaluate,report]", *TINY, "eval=oxa6", "eval.ks=[1,2]",
        *[f"+eval.benchmarks.{b}.limit=1" for b in benchmarks],
        *[f"eval.benchmarks.{b}.n_samples=2" for b in benchmarks],
        "eval.generator.stop_token_ids=[]", 'eval.generator.extra_stop_tokens=["<|im_end|>"]',
        "eval.generator.max_new_tokens=16", "eval.generator.max_total_tokens=4096",
        "+model.config_overrides.max_position_embeddings=4096",
        *[f"eval.generator.{o}" for o in ENGINE],
    ]
    run_py(overrides, tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    text = json.dumps(results)
    assert "VLLMGenerator" in text
    for name in benchmarks:
        assert name in text
