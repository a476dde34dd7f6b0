"""A fit that takes no optimiser step must stop, never report the base student as trained."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import CONF_DIR, compose_config
from reasonft.pipeline.startup import start
from reasonft.training.train import NoTrainingStep, train_student

CONF = CONF_DIR


def compose(tmp_path, **train):
    """The groups train_student reads, as Hydra composes them (the `paths` group stubbed)."""
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}})
    cfg.loss = OmegaConf.load(CONF / "loss" / "oxa_full.yaml")
    cfg.train = OmegaConf.merge(OmegaConf.load(CONF / "train" / "default.yaml"), train)
    cfg.trainer = OmegaConf.load(CONF / "trainer" / "default.yaml")
    cfg.trainer.accelerator = "cpu"
    cfg.strategy = OmegaConf.load(CONF / "strategy" / "auto.yaml")
    cfg.logger, cfg.callbacks = {}, {}
    return cfg


def make_records(n: int) -> list[dict]:
    return [
        {"prompt_id": f"p{i}", "prompt": f"Compute {i} + 3.",
         "response": f"<think>\n{i} + 3 = {i + 3}\n</think>\n\\boxed{{{i + 3}}}",
         "loss_type": "ul" if i % 4 == 0 else "ce"}
        for i in range(n)
    ]


@pytest.mark.parametrize("key", ["max_epochs", "max_steps", "limit_train_batches"])
def test_zero_step_trainer_settings_stop_at_start_up(tmp_path, key):
    zero = f"+trainer.{key}=0" if key == "limit_train_batches" else f"trainer.{key}=0"
    cfg = compose_config(overrides=[f"paths.cache_dir={tmp_path}", f"paths.output_dir={tmp_path}", zero])
    with pytest.raises(ValueError, match=f"trainer.{key}=0: the fit would take no optimiser step"):
        start(cfg)


def test_a_fit_without_a_step_raises_and_writes_no_model(tmp_path, tiny_model, tiny_tokenizer):
    cfg = compose(tmp_path, micro_batch_size=2, per_step={"ce": 3, "ul": 1}, max_length=128)
    cfg.trainer.limit_train_batches = 0  # not checked here: train_student is called directly
    with pytest.raises(NoTrainingStep, match="without one optimiser step"):
        train_student(cfg, make_records(8), copy.deepcopy(tiny_model),
                      tiny_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out" / "model").exists()
