"""train.epoch_end=official: the official sampler's epoch (micro-steps of C / A CE and U / A UL
per pool, a partial last step still divided by the full step's counts)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reasonft.training.losses import CrossEntropyTerm, LossComposition, LossInputs, UnlikelihoodTerm
from reasonft.training.sampler import MixedBatchSampler
from reasonft.training.step_totals import StepTotals


def test_the_official_recipe_epoch_counts():
    """50,000 CE + 50,000 UL, 128 + 128 per step on 32 ranks of batch 1 (accumulation 8): the
    official sampler takes 3,125 micro-steps of 16 + 16, i.e. 391 steps, the last of 5."""
    types = ["ce"] * 50_000 + ["ul"] * 50_000
    common = {"micro_batch_size": 1, "per_step": {"ce": 128, "ul": 128}, "num_replicas": 32}
    official = MixedBatchSampler(types, epoch_end="official", **common)
    shortest = MixedBatchSampler(types, epoch_end="shortest", **common)
    assert (official.steps_per_epoch, len(official)) == (math.ceil(50_000 / 16 / 8), 50_000 // 16)
    assert official.steps_per_epoch == 391 and shortest.steps_per_epoch == 390
    assert official.report["last_step_micro_batches"] == 3125 - 390 * 8 == 5
    for kind in ("ce", "ul"):
        assert official.report["pools"][kind]["used_per_epoch"] == 50_000
        assert shortest.report["pools"][kind]["used_per_epoch"] == 49_920
        assert shortest.report["pools"][kind]["left_out_per_epoch"] == 80


def test_official_leaves_out_n_mod_the_micro_step_share_per_pool():
    # C = 4, U = 4 over micro-batches of 2 on 1 rank: A = 4, one CE + one UL per micro-step.
    types = ["ce"] * 11 + ["ul"] * 6
    sampler = MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 4, "ul": 4},
                                epoch_end="official", seed=3)
    assert (len(sampler), sampler.steps_per_epoch) == (6, 2)  # 6 micro-steps: 4 + 2
    batches = sampler.global_batches(0)
    assert [len(b) for b in batches] == [8, 4]
    seen = [int(i) for b in batches for i in b]
    assert len(set(seen)) == len(seen) == 12
    assert sum(types[i] == "ul" for i in seen) == 6 and sum(types[i] == "ce" for i in seen) == 6
    assert sampler.report["pools"]["ce"]["left_out_per_epoch"] == 5
    with pytest.raises(ValueError, match="train.per_step.ce=6 is not a multiple of the accumulation"):
        MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 6, "ul": 2}, epoch_end="official")


def test_the_partial_step_is_divided_by_the_full_step_counts():
    """Summed over the partial step's micro-batches, the loss is sum(CE_seq) / C + w *
    sum(UL_seq) / U with the full step's C and U (the official division by the accumulation)."""
    types = ["ce"] * 10 + ["ul"] * 6
    rng = random.Random(0)
    logps = [[-rng.uniform(0.01, 3.0) for _ in range(rng.randint(2, 6))] for _ in types]
    weight = 0.3
    loss = LossComposition({
        "ce": CrossEntropyTerm(reduction="sequence", loss_type="ce"),
        "ul": UnlikelihoodTerm(weight=weight, reduction="sequence", loss_type="ul"),
    })
    sampler = MixedBatchSampler(types, micro_batch_size=2, per_step={"ce": 4, "ul": 4},
                                epoch_end="official", seed=1,
                                scored_tokens=[len(lp) for lp in logps])
    steps: list[list] = [[] for _ in range(sampler.steps_per_epoch)]
    for position, micro_batch in enumerate(sampler):
        indices, totals = micro_batch["indices"], StepTotals.from_dict(micro_batch["step_totals"])
        step = position // sampler.accumulate_grad_batches
        width = max(len(logps[i]) for i in indices)
        logp = torch.tensor([logps[i] + [0.0] * (width - len(logps[i])) for i in indices], dtype=torch.float64)
        mask = torch.tensor([[t < len(logps[i]) for t in range(width)] for i in indices])
        ids = torch.tensor([0 if types[i] == "ce" else 1 for i in indices])
        inputs = LossInputs.of(logp, mask, ids, ["ce", "ul"])
        steps[step].append((indices, float(loss(inputs, totals).total)))
    assert len([i for indices, _ in steps[-1] for i in indices]) == 4  # 2 micro-batches: 2 CE + 2 UL

    def reference(indices):
        ce = sum(-sum(logps[i]) / len(logps[i]) for i in indices if types[i] == "ce")
        ul = sum(
            -sum(math.log(1 - math.exp(min(lp, math.log1p(-1e-6)))) for lp in logps[i]) / len(logps[i])
            for i in indices if types[i] == "ul"
        )
        return ce / 4 + weight * ul / 4

    for step in steps:
        indices = [i for batch, _ in step for i in batch]
        assert sum(value for _, value in step) == pytest.approx(reference(indices), rel=1e-12)


def test_lightning_takes_the_partial_step(tmp_path, tiny_model, tiny_tokenizer):
    import copy
    import json

    from omegaconf import OmegaConf

    from reasonft.config import CONF_DIR
    from reasonft.training.train import train_student

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}})
    cfg.loss = OmegaConf.load(CONF_DIR / "loss" / "oxa_full.yaml")
    cfg.train = OmegaConf.merge(
        OmegaConf.load(CONF_DIR / "train" / "default.yaml"),
        {"micro_batch_size": 2, "per_step": {"ce": 4, "ul": 4}, "epoch_end": "official",
         "max_length": 128},
    )
    cfg.trainer = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    cfg.trainer.accelerator = "cpu"
    cfg.trainer.max_epochs = 2
    cfg.strategy = OmegaConf.load(CONF_DIR / "strategy" / "auto.yaml")
    cfg.logger, cfg.callbacks = {}, {}
    records = [
        {"prompt_id": f"p{i}", "prompt": f"Compute {i} + 3.", "response": f"{i} + 3 = {i + 3}",
         "loss_type": "ul" if i >= 10 else "ce"}
        for i in range(16)
    ]
    train_student(cfg, records, copy.deepcopy(tiny_model), tiny_tokenizer, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    sampler = report["data"]["sampler"]
    assert (sampler["steps_per_epoch"], sampler["last_step_micro_batches"]) == (2, 2)
    assert report["global_step"] == 2 * 2
