"""The gradient of one optimiser step is exactly that of the step's objective (METHODS §1c),

    sum_term weight * (sum over the step's units of the term / the step's count of them),

for micro-batch 1, 2 and 4, against a single big-batch reference computed here sequence by
sequence from full logits. (1 vs 2 processes: tests/training/test_ddp_training.py.)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from reasonft.training.datamodule import RecordsDataModule
from reasonft.training.losses import CrossEntropyTerm, LossComposition, UnlikelihoodTerm
from reasonft.training.module import StudentModule

UL_WEIGHT = 0.3  # large enough that a wrong UL normaliser shows in the gradient


def make_records(n: int, ul_every: int) -> list[dict[str, Any]]:
    """Responses of different lengths, every `ul_every`-th an UL record."""
    return [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Compute {i} + 3.",
            "response": f"<think>\n{i} + 3 = {i + 3}\n</think>\n" * (1 + i % 3)
            + f"\\boxed{{{i + 3}}}",
            "loss_type": "ul" if i % ul_every == 0 else "ce",
        }
        for i in range(n)
    ]


def make_loss(ce_reduction: str) -> LossComposition:
    return LossComposition(
        {
            "ce": CrossEntropyTerm(weight=1.0, reduction=ce_reduction, loss_type="ce"),
            "ul": UnlikelihoodTerm(weight=UL_WEIGHT, reduction="sequence", loss_type="ul"),
        }
    )


def reference_objective(model, examples: list[dict[str, Any]], ce_reduction: str) -> torch.Tensor:
    """The step's objective from full logits, one sequence at a time."""
    ce_token_losses, ce_seq_means, ul_seq_means = [], [], []
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor(ex["labels"])
        logp_all = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        targets = ids[0, 1:]
        logp = logp_all.gather(-1, targets[:, None])[:, 0][labels[1:] != -100]
        if ex["loss_type"] == "ce":
            ce_token_losses.append(-logp)
            ce_seq_means.append((-logp).mean())
        else:
            p = logp.exp().clamp(max=1 - 1e-6)
            ul_seq_means.append((-torch.log(1 - p)).mean())
    if ce_reduction == "token":
        tokens = torch.cat(ce_token_losses)
        ce = tokens.sum() / len(tokens)
    else:
        ce = torch.stack(ce_seq_means).sum() / len(ce_seq_means)
    return ce + UL_WEIGHT * torch.stack(ul_seq_means).sum() / len(ul_seq_means)


class GradientRecorder(pl.Callback):
    """Keeps the gradients the first optimiser step is about to apply (before any clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = {
                n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
            }


class WithoutStepTotals(RecordsDataModule):
    """The same micro-batches with each normalised by its own counts (the behaviour before)."""

    def train_dataloader(self):
        loader = super().train_dataloader()
        collate = loader.collate_fn

        def drop_totals(items):
            batch = collate(items)
            batch.pop("step_totals")
            return batch

        loader.collate_fn = drop_totals
        return loader


def step_gradients(
    model, tokenizer, micro: int, ce_reduction: str, ul: int, datamodule_cls=RecordsDataModule
):
    """One step of 8 sequences, `ul` of them UL, in micro-batches of `micro` (accumulation 8 / micro)."""
    data = datamodule_cls(
        make_records(16, ul_every=3),
        tokenizer,
        micro_batch_size=micro,
        per_step={"ce": 8 - ul, "ul": ul},
        seed=7,
        loss_types=("ce", "ul"),
    )
    module = StudentModule(model, make_loss(ce_reduction), scheduler=None)
    recorder = GradientRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=8 // micro,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    step = data.sampler.global_batches(0)[0]
    examples = [
        {**data.train_set[int(i)], "loss_type": data.loss_types[data.train_set[int(i)]["loss_type_id"]]}
        for i in step
    ]
    return recorder.grads, examples


def reference_gradients(model, examples, ce_reduction: str) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).train()
    reference_objective(model, examples, ce_reduction).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def assert_grads_close(got, want) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("ul", [4, 3])
@pytest.mark.parametrize("ce_reduction", ["sequence", "token"])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_step_gradient_equals_big_batch_reference(
    tiny_model, tiny_tokenizer, micro, ce_reduction, ul
):
    got, examples = step_gradients(copy.deepcopy(tiny_model), tiny_tokenizer, micro, ce_reduction, ul)
    assert sum(ex["loss_type"] == "ul" for ex in examples) == ul and len(examples) == 8
    lengths = {sum(label != -100 for label in ex["labels"]) for ex in examples}
    assert len(lengths) > 1  # token and sequence reductions differ on these records
    assert_grads_close(got, reference_gradients(tiny_model, examples, ce_reduction))


def test_per_micro_batch_normalisation_fails_the_reference(tiny_model, tiny_tokenizer):
    """The comparison above can fail: each micro-batch divided by its own counts (and Lightning's
    average over micro-batches) gives another gradient when the micro-batches' shares differ
    (3 UL over 4 micro-batches)."""
    got, examples = step_gradients(
        copy.deepcopy(tiny_model), tiny_tokenizer, 2, "sequence", 3, WithoutStepTotals
    )
    want = reference_gradients(tiny_model, examples, "sequence")
    worst = max(float((got[n] - want[n]).abs().max() / want[n].abs().max()) for n in want)
    assert worst > 1e-2 and math.isfinite(worst)
