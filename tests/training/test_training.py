"""Training: collation and masking, length policy, the module's losses and steps, train_student."""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from omegaconf import OmegaConf
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonft.config import CONF_DIR as CONF
from reasonft.data.prompts import PromptFormat
from reasonft.scoring.logprobs import token_logprobs
from reasonft.training.collate import Collator, pack
from reasonft.training.datamodule import RecordsDataModule
from reasonft.training.losses import CrossEntropyTerm, LossComposition, UnlikelihoodTerm
from reasonft.training.module import NonFiniteLossError, StudentModule
from reasonft.training.train import build_strategy, build_trainer, train_student


def make_records(values: list[int], ul_every: int = 0) -> list[dict]:
    return [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Compute {v} + 3.",
            "response": f"<think>\n{v} + 3 = {v + 3}\n</think>\n\\boxed{{{v + 3}}}",
            "loss_type": "ul" if ul_every and i % ul_every == 0 else "ce",
        }
        for i, v in enumerate(values)
    ]


def reference_ids(
    tokenizer, problem: str, response: str, suffix: str = ""
) -> tuple[list[int], list[int]]:
    """Prompt ids (chat template applied by hand) and response ids + the template's end of turn."""
    prompt = "<|im_start|>user\n" + problem + suffix + "<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    return prompt_ids, response_ids


def compose(tmp_path: Path, loss: str = "oxa_full", loggers: tuple[str, ...] = ("csv",), **train):
    """The config groups this stage reads, composed as Hydra would (the `paths` group stubbed)."""

    def load(group: str, name: str):
        return OmegaConf.load(CONF / group / f"{name}.yaml")

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}})
    cfg.loss = load("loss", loss)
    cfg.train = OmegaConf.merge(load("train", "default"), train)
    cfg.trainer = load("trainer", "default")
    cfg.trainer.accelerator = "cpu"
    cfg.strategy = load("strategy", "auto")
    cfg.logger = OmegaConf.merge(*[load("logger", n) for n in loggers]) if loggers else {}
    cfg.callbacks = load("callbacks", "default")
    return cfg


def collate_records(records, tokenizer, loss_types=("ce", "ul")):
    dm = RecordsDataModule(records, tokenizer, loss_types=loss_types)
    dm.setup("fit")
    return Collator(tokenizer.pad_token_id, dm.loss_types)(list(dm.train_set))


def one_step(model, loss, batch, lr=1e-2) -> StudentModule:
    """One optimiser step of a fresh StudentModule on a fixed batch (constant lr)."""
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    module = StudentModule(model, loss, optimizer=optimizer, scheduler=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(
        module, train_dataloaders=DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    )
    return module


# ---- collation and data policy ------------------------------------------------------------


def test_collated_labels_mask_exactly_prompt_and_padding(tiny_tokenizer):
    records = make_records([3, 12, 107, 5], ul_every=2)
    suffix = " Reason briefly."
    dm = RecordsDataModule(
        records, tiny_tokenizer, prompt_format=PromptFormat(suffix=suffix), micro_batch_size=4, per_step={"ce": 2, "ul": 2},
    )
    batch = next(iter(dm.train_dataloader()))
    by_id = {r["prompt_id"]: r for r in records}
    width = batch["input_ids"].shape[1]
    padded_rows = 0
    for row, prompt_id in enumerate(batch["prompt_id"]):
        rec = by_id[prompt_id]
        prompt, response = reference_ids(tiny_tokenizer, rec["prompt"], rec["response"], suffix)
        n, pad = len(prompt) + len(response), width - len(prompt) - len(response)
        padded_rows += pad > 0
        assert (
            batch["input_ids"][row].tolist()
            == prompt + response + [tiny_tokenizer.pad_token_id] * pad
        )
        assert batch["labels"][row].tolist() == [-100] * len(prompt) + response + [-100] * pad
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * pad
        assert batch["loss_types"][batch["loss_type"][row]] == rec["loss_type"]
    assert padded_rows > 0


def test_overlength_drop_and_truncate_are_counted(tiny_tokenizer):
    records = make_records([1, 22, 333, 4444, 55555, 666666, 7777777])
    records.append(
        {
            "prompt_id": "long-prompt",
            "prompt": "Compute " + " + ".join(["9"] * 40),
            "response": "\\boxed{360}",
            "loss_type": "ce",
        }
    )
    lengths, prompt_lengths = [], []
    for rec in records:
        prompt, response = reference_ids(tiny_tokenizer, rec["prompt"], rec["response"])
        lengths.append(len(prompt) + len(response))
        prompt_lengths.append(len(prompt))
    max_length = sorted(lengths)[3]
    over = [n > max_length for n in lengths]
    prompt_too_long = [o and p >= max_length for o, p in zip(over, prompt_lengths, strict=True)]
    assert any(prompt_too_long) and sum(over) > sum(prompt_too_long)

    drop = RecordsDataModule(records, tiny_tokenizer, max_length=max_length, overlength="drop")
    drop.setup()
    assert drop.report["dropped_overlength"] == sum(over)
    assert drop.report["n_train"] == len(records) - sum(over)
    assert max(len(ids) for ids in drop.train_set["input_ids"]) <= max_length

    trunc = RecordsDataModule(records, tiny_tokenizer, max_length=max_length, overlength="truncate")
    trunc.setup()
    assert trunc.report["truncated"] == sum(over) - sum(prompt_too_long)
    assert trunc.report["dropped_prompt_too_long"] == sum(prompt_too_long)
    assert trunc.report["n_train"] == len(records) - sum(prompt_too_long)
    kept = {
        pid: ids
        for pid, ids in zip(trunc.train_set["prompt_id"], trunc.train_set["input_ids"], strict=True)
    }
    for rec, n in zip(records, lengths, strict=True):
        if rec["prompt_id"] in kept:
            prompt, response = reference_ids(tiny_tokenizer, rec["prompt"], rec["response"])
            assert kept[rec["prompt_id"]] == (prompt + response)[:max_length]


def test_loss_type_default_unknown_and_uncovered(tiny_tokenizer):
    records = make_records([1, 2, 3, 4], ul_every=2)
    no_column = [{k: v for k, v in r.items() if k != "loss_type"} for r in records]
    dm = RecordsDataModule(no_column, tiny_tokenizer)
    dm.setup()
    assert dm.report["by_loss_type"] == {"ce": 4}

    sft = RecordsDataModule(records, tiny_tokenizer, per_step={"ce": 2, "ul": 1}, loss_types=("ce",))
    sft.setup()
    assert sft.report["dropped_no_loss_term"] == {"ul": 2} and sft.report["n_train"] == 2

    records[3]["loss_type"] = "UL"
    with pytest.raises(ValueError, match=r"row 3 \(prompt_id='p3'\): loss_type='UL' has neither"):
        RecordsDataModule(records, tiny_tokenizer, per_step={"ce": 2, "ul": 1}).setup()


# ---- the module -----------------------------------------------------------------------------


def test_module_ce_equals_hf_labels_loss(tiny_model, tiny_tokenizer):
    batch = collate_records(make_records([3, 12, 107, 5]), tiny_tokenizer)
    module = StudentModule(
        tiny_model, LossComposition({"ce": CrossEntropyTerm(reduction="token")}), chunk_tokens=7
    )
    with torch.no_grad():
        out, entropy, mask = module.compute_loss(batch)
        hf = tiny_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        # entropy reference from the full logits (tiny vocab, so affordable here)
        logits = hf.logits[:, :-1].double()
        ref_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(out.total, hf.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        entropy[:, 1:][mask[:, 1:]].double(), ref_entropy[mask[:, 1:]], rtol=1e-4, atol=1e-5
    )


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, tiny_tokenizer):
    batch = collate_records(make_records([3, 12, 107], ul_every=2), tiny_tokenizer)
    loss = LossComposition(
        {
            "ce": CrossEntropyTerm(),
            "ul": UnlikelihoodTerm(weight=0.3, reduction="sequence", loss_type="ul"),
        }
    )
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(tiny_model).train()
        module = StudentModule(model, loss, gradient_checkpointing=checkpointing, chunk_tokens=4)
        module.compute_loss(batch)[0].total.backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-5, atol=1e-7)


def test_packed_batch_layout():
    """Packing: the real tokens end to end, positions restarting per sequence, and an index
    that puts every padded position back (checked against a plain loop)."""
    collate = Collator(pad_token_id=0, loss_types=("ce",), packing=True)
    examples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "loss_type_id": 0, "prompt_id": "a"},
        {"input_ids": [8, 9], "labels": [-100, 9], "loss_type_id": 0, "prompt_id": "b"},
        {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4], "loss_type_id": 0, "prompt_id": "c"},
    ]
    batch = collate(examples)
    flat, positions, index = [], [], []
    for ex in examples:
        row = []
        for p, token in enumerate(ex["input_ids"]):
            row.append(len(flat))
            flat.append(token)
            positions.append(p)
        index.append(row + [0] * (4 - len(row)))
    assert batch["packed_input_ids"].tolist() == [flat]
    assert batch["packed_position_ids"].tolist() == [positions]
    assert batch["packed_index"].tolist() == index
    assert batch["input_ids"].shape == (3, 4)  # the padded view stays for the losses


def test_packed_training_gives_the_padded_loss_and_gradients(tiny_model, tiny_tokenizer):
    """One padding-free forward pass over the packed row: the same losses (CE and sequence-level
    UL), entropies and gradients as the padded batch — sequences never attend to each other."""
    records = make_records([3, 12, 107, 5, 8, 61], ul_every=3)
    padded = collate_records(records, tiny_tokenizer)
    packed = {**padded, **pack(padded["input_ids"], padded["attention_mask"])}
    loss = LossComposition(
        {"ce": CrossEntropyTerm(), "ul": UnlikelihoodTerm(weight=0.3, reduction="sequence", loss_type="ul")}
    )
    results = []
    for batch in (padded, packed):
        model = copy.deepcopy(tiny_model).train()
        module = StudentModule(model, loss, chunk_tokens=5)
        out, entropy, mask = module.compute_loss(batch)
        out.total.backward()
        results.append((out, entropy, mask, [p.grad for p in model.parameters()]))
    (a, ent_a, mask_a, grads_a), (b, ent_b, mask_b, grads_b) = results
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=1e-6)
    for name in a.terms:
        torch.testing.assert_close(a.terms[name].value, b.terms[name].value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent_a, ent_b, rtol=1e-4, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_ce_plus_zero_ul_equals_sft_exactly(tiny_model, tiny_tokenizer):
    batch = collate_records(make_records([3, 12, 107, 5, 8, 61], ul_every=3), tiny_tokenizer)
    assert set(batch["loss_type"].tolist()) == {0, 1}
    sft = LossComposition({"ce": CrossEntropyTerm()})
    zero_ul = LossComposition(
        {
            "ce": CrossEntropyTerm(),
            "ul": UnlikelihoodTerm(weight=0.0, reduction="sequence", loss_type="ul"),
        }
    )
    model_a, model_b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    with torch.no_grad():
        loss_a = StudentModule(model_a, sft).compute_loss(batch)[0]
        loss_b = StudentModule(model_b, zero_ul).compute_loss(batch)[0]
    assert torch.equal(loss_a.total, loss_b.total)
    assert loss_b.terms["ul"].value > 0  # the UL term was computed, and weighted by 0
    one_step(model_a, sft, batch)
    one_step(model_b, zero_ul, batch)
    changed = False
    for (name, a), b, before in zip(
        model_a.named_parameters(), model_b.parameters(), tiny_model.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        changed |= not torch.equal(a, before)
    assert changed


def test_no_weight_decay_on_biases_and_norms(tiny_model, tiny_tokenizer):
    batch = collate_records(make_records([3, 12]), tiny_tokenizer)
    module = one_step(copy.deepcopy(tiny_model), LossComposition({"ce": CrossEntropyTerm()}), batch)
    groups = {g["name"]: g for g in module.trainer.optimizers[0].param_groups}
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = sorted(names[id(p)] for p in groups["decay"]["params"])
    plain = sorted(names[id(p)] for p in groups["no_decay"]["params"])
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert plain and all("norm" in n or n.endswith(".bias") for n in plain)
    assert decayed and all(n.endswith(".weight") and "norm" not in n for n in decayed)
    assert len(decayed) + len(plain) == len(names)


def test_one_ul_step_lowers_probability_of_those_tokens(tiny_model, tiny_tokenizer):
    batch = collate_records(make_records([3, 12, 107, 5], ul_every=1), tiny_tokenizer)
    mask = batch["labels"] != -100
    model = copy.deepcopy(tiny_model)

    def response_logp():
        with torch.no_grad():
            return token_logprobs(model, batch["input_ids"], batch["attention_mask"], mask)[0][mask]

    before = response_logp()
    loss = LossComposition(
        {"ul": UnlikelihoodTerm(weight=1.0, reduction="sequence", loss_type="ul")}
    )
    one_step(model, loss, batch)
    after = response_logp()
    assert after.mean() < before.mean()
    assert (after < before).float().mean() > 0.9


def reference_step_metrics(model, batches, ul_weight: float) -> dict[str, float]:
    """Pooled step metrics from full logits, sequence by sequence."""
    ce_tokens, ul_sequences, entropy = [], [], {"ce": [], "ul": []}
    for batch in batches:
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        log_probs = logits[:, :-1].double().log_softmax(-1)
        token_logp = log_probs.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        token_entropy = -(log_probs.exp() * log_probs).sum(-1)
        scored = batch["labels"][:, 1:] != -100
        ce_here, ul_here = [], []
        for row in range(len(batch["prompt_id"])):
            values = token_logp[row][scored[row]].tolist()
            loss_type = batch["loss_types"][batch["loss_type"][row]]
            entropy[loss_type] += token_entropy[row][scored[row]].tolist()
            if loss_type == "ce":
                ce_here += [-v for v in values]
            else:
                ul_here.append(sum(-math.log(1 - math.exp(v)) for v in values) / len(values))
        ce_tokens += ce_here
        ul_sequences += ul_here
    loss_ce, loss_ul = sum(ce_tokens) / len(ce_tokens), sum(ul_sequences) / len(ul_sequences)
    return {
        "loss": loss_ce + ul_weight * loss_ul,
        "loss_ce": loss_ce,
        "loss_ul": sum(ul_sequences) / len(ul_sequences),
        "entropy_ce": sum(entropy["ce"]) / len(entropy["ce"]),
        "entropy_ul": sum(entropy["ul"]) / len(entropy["ul"]),
        "tokens_ce": len(entropy["ce"]),
        "tokens_ul": len(entropy["ul"]),
        "sequences_ul": len(ul_sequences),
    }


def test_step_metrics_pool_micro_batches(tiny_model, tiny_tokenizer):
    """loss_* and entropy_* reduce over the whole step, not per micro-batch; loss is the step's
    objective, sum_term weight * loss_<term>."""
    batches = [
        collate_records(make_records([3, 12, 107], ul_every=3), tiny_tokenizer),
        collate_records(make_records([5, 8, 61, 777, 90], ul_every=2), tiny_tokenizer),
    ]
    loss = LossComposition(
        {
            "ce": CrossEntropyTerm(),
            "ul": UnlikelihoodTerm(weight=0.5, reduction="sequence", loss_type="ul"),
        }
    )
    module = StudentModule(tiny_model, loss, chunk_tokens=5)
    with torch.no_grad():
        for batch in batches:
            module.record_micro_batch(batch, *module.compute_loss(batch))
    pooled = module._stats.pooled(SingleDeviceStrategy(torch.device("cpu")))
    got = module.step_metrics(pooled, elapsed=2.0)
    want = reference_step_metrics(tiny_model, batches, ul_weight=0.5)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
    n_input = sum(int(b["attention_mask"].sum()) for b in batches)
    assert got["tokens_per_s"] == pytest.approx(n_input / 2.0)


def test_nonfinite_loss_names_step_and_records(tiny_model, tiny_tokenizer):
    batch = collate_records(make_records([3, 12]), tiny_tokenizer)
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.get_output_embeddings().weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*prompt_id=\['p0', 'p1'\]"):
        one_step(model, LossComposition({"ce": CrossEntropyTerm()}), batch)


# ---- configuration and the whole stage -------------------------------------------------------


def test_logger_strategy_and_callback_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(tmp_path, loggers=("csv", "tensorboard", "wandb"))
    assert list(cfg.logger) == ["csv", "tensorboard", "wandb"]
    trainer, skipped = build_trainer(cfg)
    names = sorted(type(lg).__name__ for lg in trainer.loggers)
    assert names == ["CSVLogger", "TensorBoardLogger", "WandbLogger"] and skipped == []
    assert trainer.accumulate_grad_batches == (
        sum(cfg.train.per_step.values()) // cfg.train.micro_batch_size
    )

    quiet = compose(tmp_path, loggers=("none",))
    trainer, skipped = build_trainer(quiet)
    assert trainer.loggers == [] and skipped == ["lr_monitor"]

    assert build_strategy(OmegaConf.load(CONF / "strategy" / "auto.yaml")) == "auto"
    ddp = build_strategy(OmegaConf.load(CONF / "strategy" / "ddp.yaml"))
    assert isinstance(ddp, DDPStrategy)
    with pytest.raises(ValueError, match="needs `_target_`"):
        build_strategy(OmegaConf.create({"kind": "ddp"}))
    bad = compose(tmp_path)
    bad.trainer.accumulate_grad_batches = 2
    with pytest.raises(ValueError, match="derived"):
        build_trainer(bad)
    uneven = compose(tmp_path, per_step={"ce": 5, "ul": 1}, micro_batch_size=4)
    with pytest.raises(ValueError, match="multiple of"):
        build_trainer(uneven)


def test_train_student_with_packing_matches_padded_training(tmp_path, tiny_model, tiny_tokenizer):
    """`train.packing=true` through Lightning: the same run, the same weights (float tolerance)."""
    records = make_records(list(range(3, 15)), ul_every=4)
    weights = []
    for packing in (False, True):
        cfg = compose(
            tmp_path / str(packing), loggers=(), micro_batch_size=2, per_step={"ce": 3, "ul": 1}, optimizer={"lr": 1e-3}, max_length=128, packing=packing,
        )
        cfg.trainer.max_steps = 3
        cfg.trainer.enable_checkpointing = False
        cfg.callbacks = {}
        model = copy.deepcopy(tiny_model)
        train_student(cfg, records, model, tiny_tokenizer, tmp_path / str(packing) / "out")
        weights.append(model.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(weights[0].values(), tiny_model.state_dict().values()))
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_train_student_end_to_end(tmp_path, tiny_model, tiny_tokenizer):
    records = make_records(list(range(3, 15)), ul_every=4)
    cfg = compose(
        tmp_path,
        micro_batch_size=2,
        per_step={"ce": 3, "ul": 1},
        optimizer={"lr": 1e-3},
        max_length=128,
    )
    cfg.trainer.max_epochs = 2
    model = copy.deepcopy(tiny_model)
    out_dir = tmp_path / "out"
    path = train_student(cfg, records, model, tiny_tokenizer, out_dir)

    assert path == str(out_dir / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), b in zip(
        model.state_dict().items(), reloaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not all(
        torch.equal(a, b) for a, b in zip(model.parameters(), tiny_model.parameters(), strict=True)
    )
    assert (
        AutoTokenizer.from_pretrained(path)("7 + 3")["input_ids"]
        == tiny_tokenizer("7 + 3")["input_ids"]
    )

    report = json.loads((out_dir / "train_report.json").read_text())
    assert report["model_dir"] == "model"  # relative to the folder the report is in
    sampler = report["data"]["sampler"]
    # 9 CE + 3 UL records, 3 + 1 per step: both pools used up after 3 steps
    assert sampler["steps_per_epoch"] == 3 and sampler["epoch_end"] == "shortest"
    assert sampler["pools"]["ce"]["left_out_per_epoch"] == sampler["pools"]["ul"]["left_out_per_epoch"] == 0
    assert report["global_step"] == 2 * sampler["steps_per_epoch"]
    assert report["accumulate_grad_batches"] == 2

    (metrics_file,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    with metrics_file.open() as fh:
        rows = list(csv.DictReader(fh))
    for column in (
        "loss",
        "loss_ce",
        "loss_ul",
        "entropy_ce",
        "entropy_ul",
        "grad_norm",
        "tokens_per_s",
        "tokens_ce",
        "tokens_ul",
        "lr/decay",
    ):
        assert column in rows[0], column
    step_rows = [r for r in rows if r["loss"]]
    assert len(step_rows) == report["global_step"]
    assert all(float(r["sequences_ul"]) == 1 and float(r["sequences_ce"]) == 3 for r in step_rows)
    for r in step_rows:
        assert 0 < float(r["entropy_ce"]) <= math.log(len(tiny_tokenizer)) + 1e-4
    # cosine schedule with warmup, one value per optimiser step
    lr_by_step = {int(r["step"]): float(r["lr/decay"]) for r in rows if r["lr/decay"]}
    total = report["global_step"]
    warmup = math.ceil(0.03 * total)
    for step, lr in lr_by_step.items():
        if step < warmup:
            want = 1e-3 * step / warmup
        else:
            want = 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert lr == pytest.approx(want, abs=1e-12), step
    assert sorted(lr_by_step) == list(range(total))
    hparams = yaml.safe_load(metrics_file.with_name("hparams.yaml").read_text())
    assert (
        hparams["train"]["per_step"] == {"ce": 3, "ul": 1}
        and hparams["train"]["optimizer"]["_target_"] == "torch.optim.AdamW"
        and hparams["loss"]["terms"]["ul"]["weight"] == 1e-4
    )
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()

    # resume from last.ckpt into a fresh copy of the base student: one more epoch
    cfg.train.ckpt_path = "last"
    cfg.trainer.max_epochs = 3
    resumed = copy.deepcopy(tiny_model)
    train_student(cfg, records, resumed, tiny_tokenizer, tmp_path / "out2")
    report2 = json.loads((tmp_path / "out2" / "train_report.json").read_text())
    assert report2["global_step"] == 3 * sampler["steps_per_epoch"]


def reference_objective(model, batch, ul_weight: float) -> torch.Tensor:
    """OXA_FULL's step objective written out: each sequence's mean token loss over its response
    tokens (CE: -log p; UL: -log(1 - p), p clamped at 1 - 1e-6), the mean over the CE sequences
    plus `ul_weight` times the mean over the UL sequences."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    ce, ul = [], []
    for b in range(batch["input_ids"].shape[0]):
        positions = [t for t in range(1, batch["labels"].shape[1]) if batch["labels"][b, t] != -100]
        logp = torch.stack([logp_all[b, t - 1, batch["labels"][b, t]] for t in positions])
        if batch["loss_types"][int(batch["loss_type"][b])] == "ul":
            p = torch.exp(logp).clamp(max=1 - 1e-6)
            ul.append(-torch.log(1 - p).mean())
        else:
            ce.append(-logp.mean())
    return torch.stack(ce).mean() + ul_weight * torch.stack(ul).mean()


def test_optimizer_and_scheduler_come_from_config(tmp_path, tiny_model, tiny_tokenizer):
    """`train.optimizer` swapped for SGD and `train.scheduler` for none: the saved optimiser is
    SGD with the configured rate, the two weight-decay groups kept, and one step moves each
    weight by exactly -lr * the gradient of the step objective (no momentum, no decay, no
    clipping), the gradient computed here from the objective written out by hand."""
    records = make_records([3, 4, 5, 6], ul_every=4)  # 3 CE + 1 UL: the one step holds them all
    cfg = compose(
        tmp_path, loggers=(), micro_batch_size=2, per_step={"ce": 3, "ul": 1}, max_length=128
    )
    lr = 0.5
    cfg.train.optimizer = OmegaConf.create(
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": lr, "momentum": 0.0}
    )
    cfg.train.scheduler = None
    cfg.trainer.max_steps = 1
    cfg.trainer.gradient_clip_val = None
    cfg.callbacks = {"checkpoint": cfg.callbacks.checkpoint}
    model = copy.deepcopy(tiny_model)
    train_student(cfg, records, model, tiny_tokenizer, tmp_path / "out")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    (opt_state,) = state["optimizer_states"]
    groups = {g["name"]: g for g in opt_state["param_groups"]}
    assert set(groups) == {"decay", "no_decay"} and state["lr_schedulers"] == []
    assert all(g["lr"] == lr and "momentum" in g and "betas" not in g for g in groups.values())
    assert groups["no_decay"]["weight_decay"] == 0.0 and opt_state["state"] == {}  # SGD, no momentum buffers

    reference = copy.deepcopy(tiny_model).train()
    objective = reference_objective(reference, collate_records(records, tiny_tokenizer), 1e-4)
    grads = torch.autograd.grad(objective, list(reference.parameters()))
    for (name, before), after, grad in zip(
        tiny_model.named_parameters(), model.parameters(), grads, strict=True
    ):
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(after, before - lr * grad, rtol=0, atol=1e-6, msg=name)


def test_bad_optimizer_settings_fail_when_the_module_is_made(tiny_model, tmp_path):
    loss = LossComposition({"ce": CrossEntropyTerm()})
    with pytest.raises(ValueError, match="train.optimizer: Invalid learning rate"):
        StudentModule(tiny_model, loss, optimizer=functools.partial(torch.optim.AdamW, lr=-1.0))
    with pytest.raises(ValueError, match="train.optimizer: Invalid beta parameter at index 1"):
        StudentModule(
            tiny_model, loss, optimizer=functools.partial(torch.optim.AdamW, betas=(0.9, 1.5))
        )
    from reasonft.training.schedules import warmup_cosine

    with pytest.raises(ValueError, match="train.scheduler.warmup_ratio=1.5"):
        StudentModule(tiny_model, loss, scheduler=functools.partial(warmup_cosine, warmup_ratio=1.5))
    cfg = compose(tmp_path)
    cfg.train.optimizer = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1})
    with pytest.raises(ValueError, match="train.optimizer must be a node with `_target_` and `_partial_: true`"):
        train_student(cfg, make_records([1, 2]), tiny_model, None, tmp_path / "out")


def test_a_share_without_a_term_is_ignored_and_said(tmp_path, tiny_model, tiny_tokenizer, caplog):
    """loss=sft after an OXA_FULL preset: the UL records are left out, steps hold CE only."""
    import json

    cfg = compose(tmp_path, loss="sft", per_step={"ce": 2, "ul": 1})
    records = make_records([1, 2, 3, 4])
    for r in records[:2]:
        r["loss_type"] = "ul"
    with caplog.at_level("WARNING"):
        train_student(cfg, records, tiny_model, tiny_tokenizer, tmp_path / "o")
    assert "train.per_step.ul=1 is ignored" in caplog.text
    report = json.loads((tmp_path / "o" / "train_report.json").read_text())
    assert report["accumulate_grad_batches"] * cfg.train.micro_batch_size == 2


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from omegaconf import OmegaConf
    tests_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path[:0] = [str(tests_dir), str(tests_dir / "training")]
    from conftest import TINY_CORPUS
    from test_training import compose, make_records
    from reasonft.config import CONF_DIR
    from reasonft.models.loading import random_student
    from reasonft.models.tokenizer import train_tokenizer
    from reasonft.training.train import train_student

    tokenizer = train_tokenizer(TINY_CORPUS, vocab_size=300)
    shape = {"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32,
             "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 512}
    model = random_student(shape, seed=0)
    cfg = compose(out, micro_batch_size=1, per_step={"ce": 5, "ul": 3}, max_length=128)
    cfg.strategy = OmegaConf.load(CONF_DIR / "strategy" / "ddp.yaml")
    cfg.trainer.devices = 2
    cfg.callbacks.pop("progress_bar")
    train_student(cfg, make_records(list(range(3, 19)), ul_every=3), model, tokenizer, out / "out")
    """
)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("REASONFT_TEST_DISTRIBUTED") != "1",
    reason="starts 2 DDP processes (15-50 s on 2 cores); set REASONFT_TEST_DISTRIBUTED=1 to run",
)
def test_train_student_ddp_two_cpu_processes(tmp_path):
    """Real DDP (gloo, 2 processes): each step pools exactly U UL sequences over both ranks."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    tests_dir = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(script), str(tests_dir), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["accumulate_grad_batches"] == 4
    sampler = report["data"]["sampler"]
    assert sampler["steps_per_epoch"] == math.ceil(10 / 5) == report["global_step"]
    (metrics_file,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    with metrics_file.open() as fh:
        step_rows = [r for r in csv.DictReader(fh) if r["loss"]]
    assert len(step_rows) == report["global_step"]
    assert all(float(r["sequences_ul"]) == 3 and float(r["sequences_ce"]) == 5 for r in step_rows)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
