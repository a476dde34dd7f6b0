"""CPU DDP (gloo, 2 processes) trains exactly like 1 process on the same optimiser step, and the
step's gradient is the step objective's (METHODS §1c) computed plainly in this test.

One optimiser step of 2 CE + 2 UL sequences in micro-batches of 1: one process accumulating 4
against DDP with 2 ranks accumulating 2 each. The MixedBatchSampler gives both runs the same
sequences. The optimiser is plain SGD from config (no momentum, decay, schedule or clipping), so
the weights move by exactly -lr * gradient and any error of scale (accumulation, rank averaging,
per-micro-batch normalisation) shows, where AdamW would normalise it away.

The DDP run is this file run as a Hydra app over conf/config.yaml (`python
tests/training/test_ddp_training.py strategy=ddp trainer.devices=2 ...`), so Lightning's DDP launcher
re-launches it for rank 1 exactly as it re-launches `run.py`: the test also checks that the
re-launched rank runs in the same Hydra output folder (Lightning passes `hydra.run.dir` and
`hydra.output_subdir=null` to it) and creates no folder of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from reasonft.config import CONF_DIR, compose_config

CORPUS = [
    f"What is {a} * {b}? It is {a * b}. \\boxed{{{a * b}}}" for a in range(9) for b in range(9)
]
# Tolerances: the loss is pooled over the same tokens in both runs (float64 sums), so it agrees to
# float32 rounding; the gradients differ by float32 summation order (all-reduce vs accumulation).
LOSS_RTOL = 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7
LR = 10.0  # SGD: weights move by -LR * gradient
UL_WEIGHT = 0.1
OVERRIDES = [
    "logger=none",
    "loss=oxa_full",
    f"loss.terms.ul.weight={UL_WEIGHT}",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
    "callbacks.checkpoint=null",
    "++trainer.enable_checkpointing=false",
    "trainer.accelerator=cpu",
    "trainer.max_steps=1",
    "train.micro_batch_size=1",
    "train.per_step={ce:2,ul:2}",
    "train.max_length=96",
    "data.prompt_suffix=",
    "data.chat_template=false",
    "train.optimizer._target_=torch.optim.SGD",
    "~train.optimizer.betas",
    f"train.optimizer.lr={LR}",
    "train.optimizer.weight_decay=0.0",
    "train.scheduler=null",
    "trainer.gradient_clip_val=null",
    "train.seed=3",
]


STUDENT = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


class StepLossRecorder(pl.Callback):
    """Writes the pooled loss of the first optimiser step (global rank 0) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if (
            trainer.global_step == 1
            and trainer.is_global_zero
            and "loss" in trainer.callback_metrics
        ):
            self.path.write_text(json.dumps({"loss": float(trainer.callback_metrics["loss"])}))


def make_inputs(workdir: Path) -> None:
    from reasonft.data.records import as_dataset
    from reasonft.io import write_records
    from reasonft.models.tokenizer import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(CORPUS, vocab_size=300), workdir / "tokenizer")
    rows = [
        {
            "prompt_id": f"r{i}",
            "prompt": f"What is {i} * {i + 2}?",
            "response": f"{i} * {i + 2} = {i * (i + 2) + (i == 7)}. \\boxed{{{i * (i + 2)}}}"
            * (1 + i % 3),
            "loss_type": "ul" if i % 3 == 1 else "ce",
        }
        for i in range(8)
    ]
    write_records(as_dataset(rows), workdir / "records.jsonl")


def overrides_for(devices: int) -> list[str]:
    return [*OVERRIDES, *(["strategy=ddp"] if devices > 1 else []), f"trainer.devices={devices}"]


def train_once(cfg: DictConfig, workdir: Path) -> None:
    """Train one step with `cfg`; rank 0 saves the model and the step loss in paths.output_dir."""
    from reasonft.io import read_records
    from reasonft.models.loading import load_tokenizer, random_student
    from reasonft.training.train import train_student

    torch.set_num_threads(1)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.callbacks.step_loss = {
            "_target_": f"{__name__}.StepLossRecorder",
            "path": str(out / "loss.json"),
        }
    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    model = random_student({**STUDENT, "vocab_size": len(tokenizer)}, seed=0)
    train_student(cfg, read_records(workdir / "records.jsonl"), model, tokenizer, out / "result")


def hydra_app(cfg: DictConfig) -> None:
    """The task of `python tests/training/test_ddp_training.py +workdir=... [overrides]` (every rank)."""
    train_once(cfg, Path(cfg.workdir))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "result" / "model" / "model.safetensors"))


@pytest.mark.distributed
def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:

    import reasonft  # noqa: F401  (config resolvers)

    make_inputs(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env.pop("LOCAL_RANK", None)
    run_dir = tmp_path / "ddp"
    ddp = subprocess.run(
        [
            sys.executable,
            __file__,
            *overrides_for(2),
            f"+workdir={tmp_path}",
            f"hydra.run.dir={run_dir}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=85,
        check=False,
    )
    assert ddp.returncode == 0, f"DDP run failed:\n{ddp.stdout[-3000:]}\n{ddp.stderr[-6000:]}"
    report = json.loads((run_dir / "result" / "train_report.json").read_text())
    assert (
        report["world_size"] == 2
        and report["accumulate_grad_batches"] == 2
        and report["global_step"] == 1
    )

    # Hydra + DDP: rank 1 ran in rank 0's folder (its job log is there), wrote no second .hydra,
    # and no other folder appeared (neither beside it nor under the working directory).
    assert (run_dir / "train_ddp_process_1.log").exists(), sorted(p.name for p in run_dir.iterdir())
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "records.jsonl", "tokenizer"]

    threads = torch.get_num_threads()
    try:
        single_cfg = compose_config(
            overrides=[*overrides_for(1), f"paths.output_dir={tmp_path / 'single'}"],
        )
        train_once(single_cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)

    single_loss = json.loads((tmp_path / "single" / "loss.json").read_text())["loss"]
    ddp_loss = json.loads((run_dir / "loss.json").read_text())["loss"]
    assert ddp_loss == pytest.approx(single_loss, rel=LOSS_RTOL)

    initial = _initial_weights(tmp_path)
    want_loss, want_grads = _reference_step(tmp_path, single_cfg)
    assert single_loss == pytest.approx(want_loss, rel=1e-5)
    for name, run in (("single process", tmp_path / "single"), ("DDP", run_dir)):
        weights = _weights(run)
        assert weights.keys() == initial.keys()
        for key, grad in want_grads.items():
            torch.testing.assert_close(
                (initial[key] - weights[key]) / LR, grad, rtol=GRAD_RTOL, atol=GRAD_ATOL,
                msg=f"{name}: {key}",
            )


def _reference_step(workdir: Path, cfg: DictConfig) -> tuple[float, dict[str, torch.Tensor]]:
    """Objective and gradient of the first step from full logits, sequence by sequence: mean CE
    over the step's CE sequences (token mean inside each; loss=oxa_full reduces CE by sequence)
    + UL_WEIGHT * the same for UL."""
    from reasonft.data.prompts import PromptFormat
    from reasonft.io import read_records
    from reasonft.models.loading import load_tokenizer, random_student
    from reasonft.training.datamodule import RecordsDataModule

    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    data = RecordsDataModule(
        read_records(workdir / "records.jsonl"), tokenizer,
        prompt_format=PromptFormat(chat_template=False), max_length=cfg.train.max_length, micro_batch_size=1,
        per_step={"ce": 2, "ul": 2}, seed=cfg.train.seed, loss_types=("ce", "ul"),
    )
    data.setup()
    model = random_student({**STUDENT, "vocab_size": len(tokenizer)}, seed=0).train()
    means: dict[str, list[torch.Tensor]] = {"ce": [], "ul": []}
    for index in data.build_sampler().global_batches(0)[0]:
        row = data.train_set[int(index)]
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])
        logp = logp[:, 0][labels[1:] != -100]
        loss_type = data.loss_types[row["loss_type_id"]]
        per_token = -logp if loss_type == "ce" else -torch.log(1 - logp.exp())
        means[loss_type].append(per_token.mean())
    assert len(means["ce"]) == len(means["ul"]) == 2
    objective = torch.stack(means["ce"]).mean() + UL_WEIGHT * torch.stack(means["ul"]).mean()
    objective.backward()
    return float(objective.detach()), {k: p.grad for k, p in model.named_parameters()}


def _initial_weights(workdir: Path) -> dict[str, torch.Tensor]:
    from reasonft.models.loading import load_tokenizer, random_student

    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    model = random_student({**STUDENT, "vocab_size": len(tokenizer)}, seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    import hydra

    import reasonft  # noqa: F401  (the structured-config schema conf/config.yaml names)

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(hydra_app)()
