"""A failed start-up prints its cause first: one short message whose first line names the config
key, a hint that works, and the traceback only with HYDRA_FULL_ERROR=1 (reasonft/errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import PROJECT_ROOT, compose_config
from reasonft.errors import TRACEBACK_HINT, RunFailed, cause_message, stop
from reasonft.pipeline.startup import start

HAS_VLLM = __import__("importlib").util.find_spec("vllm") is not None
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: a GPU preset starts")
NO_VLLM = pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the vLLM backend starts")

# (overrides, what the first line starts with, the hint's override or None)
CASES = [
    pytest.param(["generate=vllm"], "generate: the vLLM generation backend needs", "generate=hf",
                 marks=NO_VLLM, id="vllm-self-samples"),
    pytest.param(["generate@eval.generator=vllm"], "eval.generator: the vLLM generation backend needs",
                 "generate@eval.generator=hf", marks=NO_VLLM, id="vllm-evaluation"),
    pytest.param(["trainer=gpu"], "trainer.accelerator: asks for a GPU", "trainer=default",
                 marks=NO_GPU, id="gpu-preset"),
    pytest.param(["trainer.accelerator=gpu"], "trainer.accelerator: asks for a GPU",
                 "trainer.accelerator=cpu", marks=NO_GPU, id="gpu-accelerator"),
    pytest.param(["train.micro_batch_size=3"], "trainer/train: the sum of train.per_step",
                 None, id="step-size"),
    pytest.param(["model.build.final_lr_ratio=2"], "model.build.final_lr_ratio=2", None, id="model-build"),
]


def _start(tmp_path, overrides: list[str]) -> None:
    cfg = compose_config(overrides=[*overrides, f"paths.output_dir={tmp_path}",
                                    f"paths.cache_dir={tmp_path}/cache"])
    start(cfg)


def _failure(tmp_path, overrides: list[str]) -> Exception:
    with pytest.raises(Exception) as raised:
        _start(tmp_path, overrides)
    return raised.value


def _apply(overrides: list[str], fix: str) -> list[str]:
    """The overrides with the hint's override in place of any that sets the same key or group."""
    key = fix.split("=", 1)[0]
    return [o for o in overrides if o.split("=", 1)[0] != key] + [fix]


@pytest.mark.parametrize(("overrides", "first", "fix"), CASES)
def test_first_line_names_the_key_and_the_hint_works(tmp_path, capsys, overrides, first, fix):
    err = _failure(tmp_path, overrides)
    with pytest.raises(SystemExit) as exited:
        stop(err, overrides)
    assert exited.value.code == 1
    printed = capsys.readouterr().err.splitlines()
    assert printed[0].startswith(first), printed
    assert printed[-1] == TRACEBACK_HINT and len(printed) <= 4, printed
    assert "Traceback" not in "\n".join(printed)
    hints = [line for line in printed if line.startswith("To ")]
    if fix is None:
        assert not hints, printed
        return
    assert hints == [hints[0]] and hints[0].endswith(f": {fix}"), printed
    _start(tmp_path, _apply(overrides, fix))  # the hint, applied as printed, starts the run


def test_full_error_re_raises_the_original(tmp_path, monkeypatch):
    err = _failure(tmp_path, ["train.micro_batch_size=3"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError) as raised:
        stop(err, ["train.micro_batch_size=3"])
    assert raised.value is err and raised.value.__cause__ is not None


def test_a_multirun_job_fails_with_the_short_form(tmp_path):
    err = _failure(tmp_path, ["train.micro_batch_size=3"])
    with pytest.raises(RunFailed) as raised:
        stop(err, ["train.micro_batch_size=3"], multirun=True)
    assert str(raised.value).startswith("trainer/train: the sum of train.per_step")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_unknown_error_keeps_its_type():
    class Strange(Exception):
        pass

    assert cause_message(Strange("it broke")) == "Strange: it broke"


@NO_GPU
def test_run_py_prints_the_cause_first(tmp_path):
    """The whole path through Hydra: the first line on stderr names the key, no traceback; with
    HYDRA_FULL_ERROR=1 the traceback is back."""
    command = [sys.executable, "run.py", "trainer=gpu", f"hydra.run.dir={tmp_path}/run",
               f"paths.cache_dir={tmp_path}/cache"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    short = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, check=False)
    assert short.returncode == 1
    lines = short.stderr.strip().splitlines()
    assert lines[0].startswith("trainer.accelerator: asks for a GPU"), short.stderr
    assert "Traceback" not in short.stderr and lines[1] == "To train on the CPU instead: trainer=default"
    full = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={**env, "HYDRA_FULL_ERROR": "1"}, check=False)
    assert full.returncode == 1 and "Traceback" in full.stderr and "No supported gpu backend" in full.stderr
