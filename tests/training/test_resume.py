"""Faults: `train.ckpt_path` resumes exactly after SIGKILL; a NaN/inf loss stops after a checkpoint.

The run that is killed runs in a subprocess (this file is also its script: `python
tests/training/test_resume.py run ...`) and SIGKILLs itself in the middle of an accumulation step. The
uninterrupted run and the runs resumed from the killed run's checkpoints run in this process, on
one thread like the subprocess. A resumed run must train on the same micro-batches in the same
order and end with the same weights as the uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from reasonft.config import compose_config

# 24 CE + 8 UL records, 3 CE + 1 UL per step: 8 optimiser steps per epoch, 2 micro-batches
# each (accumulation 2), 3 epochs = 24 steps; a checkpoint every 4 steps (4, 8 = end of epoch 0,
# 12 = middle of epoch 1, ...). The killed run dies inside step 13, after its second micro-batch
# started, so `last` is the mid-epoch checkpoint of step 12.
N_CE, N_UL = 24, 8
STEPS_PER_EPOCH, EPOCHS, EVERY_N_STEPS, KILL_STEP = 8, 3, 4, 13
# Same process layout, same thread count, same operations: the resumed run is expected to be
# bit-identical. The tolerance only absorbs float reordering should a library change it.
WEIGHT_ATOL = 0.0
TRAIN_OVERRIDES = [
    "logger=none",
    "loss=oxa_full",
    "loss.terms.ul.weight=0.1",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
    f"callbacks.checkpoint.every_n_train_steps={EVERY_N_STEPS}",
    "callbacks.checkpoint.save_top_k=-1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    f"trainer.max_epochs={EPOCHS}",
    "train.micro_batch_size=2",
    "train.per_step={ce:3,ul:1}",
    "train.max_length=96",
    "data.prompt_suffix=",
    "data.chat_template=false",
    "train.optimizer.lr=3e-3",
    "train.scheduler.warmup_ratio=0.1",
    "train.seed=0",
]
CORPUS = [
    f"What is {a} + {b}? The answer is {a + b}. \\boxed{{{a + b}}}"
    for a in range(9)
    for b in range(9)
]


# ---- the subprocess side -------------------------------------------------------------------


class BatchRecorder(pl.Callback):
    """Test-only callback: appends each micro-batch's position and prompt ids to a JSONL file and
    SIGKILLs the process when the second micro-batch of `kill_at_step` starts (if given)."""

    def __init__(self, path: str, kill_at_step: int | None = None) -> None:
        self.path = Path(path)
        self.kill_at_step = kill_at_step

    def on_train_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        if (
            self.kill_at_step is not None
            and trainer.global_step == self.kill_at_step
            and batch_idx % 2
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        row = [trainer.current_epoch, batch_idx, trainer.global_step, list(batch["prompt_id"])]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def compose_train_config(overrides: list[str]) -> Any:

    import reasonft  # noqa: F401  (config resolvers)

    return compose_config(overrides=overrides)


def make_inputs(workdir: Path) -> None:
    """Tokenizer and records, written once so that every subprocess trains on identical inputs."""
    from reasonft.data.records import as_dataset
    from reasonft.io import write_records
    from reasonft.models.tokenizer import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(CORPUS, vocab_size=300), workdir / "tokenizer")
    rows = []
    for i in range(N_CE + N_UL):
        a, b = i % 9, (3 * i) % 7
        rows.append(
            {
                "prompt_id": f"p{i}",
                "prompt": f"What is {a} + {b}?",
                "response": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b + (i >= N_CE)}}}",
                "loss_type": "ul" if i >= N_CE else "ce",
            }
        )
    write_records(as_dataset(rows), workdir / "records.jsonl")


def tiny_student(vocab_size: int) -> Any:
    from reasonft.models.loading import random_student

    return random_student(
        {
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "tie_word_embeddings": False,
        },
        seed=0,
    )


def run_training(
    workdir: Path, out: Path, ckpt_path: str | None, kill_at_step: int | None, tag: str
) -> None:
    from reasonft.io import read_records
    from reasonft.models.loading import load_tokenizer
    from reasonft.training.train import train_student

    torch.set_num_threads(1)
    overrides = [
        *TRAIN_OVERRIDES,
        f"paths.output_dir={out}",
        f"train.ckpt_path='{ckpt_path}'" if ckpt_path else "train.ckpt_path=null",
        f"+callbacks.recorder._target_={__name__}.BatchRecorder",
        f"+callbacks.recorder.path={out / f'batches-{tag}.jsonl'}",
        f"+callbacks.recorder.kill_at_step={kill_at_step if kill_at_step is not None else 'null'}",
    ]
    cfg = compose_train_config(overrides)
    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    model = tiny_student(len(tokenizer))
    train_student(
        cfg, read_records(workdir / "records.jsonl"), model, tokenizer, out / f"result-{tag}"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt-path")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--tag", default="run")
    args = parser.parse_args(argv)
    run_training(
        args.workdir.resolve(), args.out.resolve(), args.ckpt_path, args.kill_at_step, args.tag
    )


# ---- the test side -------------------------------------------------------------------------


def _script(*args: str | Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    return subprocess.run(
        [sys.executable, __file__, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """The in-process runs use one thread, like the subprocess, so float results are comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(result_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(result_dir / "model" / "model.safetensors"))


def _batches(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"weights differ by up to {worst:.3g} (tolerance {WEIGHT_ATOL})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    """The inputs, the uninterrupted run and the run killed with SIGKILL in step 13."""
    work = tmp_path_factory.mktemp("resume")
    make_inputs(work)
    full, killed = work / "full", work / "killed"
    proc = _script(
        "run", "--workdir", work, "--out", killed, "--tag", "killed", "--kill-at-step", KILL_STEP
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"expected death by SIGKILL, got return code {proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    run_training(work, full, None, None, "full")
    return {"work": work, "full": full, "killed": killed}


def _resume_and_compare(runs: dict[str, Path], ckpt_name: str, tag: str, first_step: int) -> None:
    """Resume in a copy of the killed run's folder (each resumed run writes checkpoints too)."""
    out = runs["work"] / tag
    shutil.copytree(runs["killed"] / "checkpoints", out / "checkpoints", symlinks=True)
    ckpt_path = ckpt_name if ckpt_name == "last" else str(out / "checkpoints" / ckpt_name)
    run_training(runs["work"], out, ckpt_path, None, tag)
    full = _batches(runs["full"] / "batches-full.jsonl")
    resumed = _batches(out / f"batches-{tag}.jsonl")
    assert resumed[0][2] == first_step, f"resumed at step {resumed[0][2]}, expected {first_step}"
    # Same micro-batches (epoch, index, step, prompt ids) from the checkpoint to the end.
    assert resumed == full[len(full) - len(resumed) :]
    assert len(full) == STEPS_PER_EPOCH * EPOCHS * 2
    _assert_same_weights(_weights(runs["full"] / "result-full"), _weights(out / f"result-{tag}"))


def test_inputs_killed_run_left_checkpoints(runs: dict[str, Path]) -> None:
    ckpts = sorted(p.name for p in (runs["killed"] / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts
    assert [n for n in ckpts if n.startswith("epoch=")] == [
        "epoch=0-step=4.ckpt",
        "epoch=0-step=8.ckpt",
        "epoch=1-step=12.ckpt",
    ]
    assert (runs["killed"] / "checkpoints" / "last.ckpt").resolve().name == "epoch=1-step=12.ckpt"
    assert not (runs["killed"] / "result-killed" / "model").exists()


def test_resume_from_epoch_end_checkpoint_matches_uninterrupted_run(runs: dict[str, Path]) -> None:
    _resume_and_compare(runs, "epoch=0-step=8.ckpt", "from8", first_step=8)


def test_resume_last_after_sigkill_mid_epoch_matches_uninterrupted_run(
    runs: dict[str, Path],
) -> None:
    """`last` is step 12, mid-epoch: the data module saves its micro-batch position with the
    checkpoint (state_dict / load_state_dict), so the resumed run goes on with the same batches."""
    _resume_and_compare(runs, "last", "fromlast", first_step=12)


# ---- NaN / inf guard (in process) ---------------------------------------------------------


def _nan_run(
    tmp_path: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch, module_checks: bool
) -> Any:
    """(config, records, model) of a run whose loss is NaN at global step 3."""
    from reasonft.training.module import StudentModule

    original = StudentModule.compute_loss

    def nan_at_step_3(self: StudentModule, batch: dict[str, Any]) -> Any:
        out, entropy, mask = original(self, batch)
        if self.global_step == 3:
            out = type(out)(out.total * float("nan"), out.terms)
        return out, entropy, mask

    monkeypatch.setattr(StudentModule, "compute_loss", nan_at_step_3)
    if not module_checks:
        # A module without its own check: the guard's on_before_backward path must catch it.
        monkeypatch.setattr(StudentModule, "on_nonfinite_loss", lambda *args, **kwargs: None)
    cfg = compose_train_config(
        [
            *TRAIN_OVERRIDES,
            f"paths.output_dir={tmp_path}",
            "++callbacks.nan_guard._target_=reasonft.training.nan_guard.NaNGuard",
            "train.per_step={ce:4,ul:0}",  # CE records only
        ]
    )
    records = [
        {
            "prompt_id": f"q{i}",
            "prompt": f"What is {i} + 1?",
            "response": f"It is {i + 1}.",
            "loss_type": "ce",
        }
        for i in range(16)
    ]
    model = tiny_student(len(tiny_tokenizer))
    return cfg, records, model


@pytest.mark.parametrize("module_checks", [True, False], ids=["module-detects", "guard-detects"])
def test_nan_loss_stops_with_step_and_records_after_checkpoint(
    tmp_path: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch, module_checks: bool
) -> None:
    from reasonft.training.module import NonFiniteLossError
    from reasonft.training.train import train_student

    cfg, records, model = _nan_run(tmp_path, tiny_tokenizer, monkeypatch, module_checks)
    with pytest.raises(NonFiniteLossError) as info:
        train_student(cfg, records, model, tiny_tokenizer, tmp_path / "result")
    message = "\n".join([str(info.value), *getattr(info.value, "__notes__", [])])
    assert "global step 3" in message
    ckpt = tmp_path / "checkpoints" / "nonfinite-step=3.ckpt"
    assert str(ckpt) in message
    named = message.split("prompt_id=")[1].split("]")[0]
    assert any(f"'q{i}'" in named for i in range(16))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "result" / "model").exists()


if __name__ == "__main__":
    main(sys.argv[1:])
