"""What only CUDA can show: bf16-mixed training, packing, scoring and sampling on the device
agree with the CPU float32 results, and the chunked vocabulary projection keeps GPU memory far
below the [batch, length, vocab] logits. All gpu-marked (skipped without CUDA, tests/conftest.py);
bench/gpu_check.sh runs them on the GPU machine."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from reasonft.generation.hf import HFGenerator
from reasonft.scoring.logprobs import token_logprobs
from reasonft.scoring.scorer import Scorer
from reasonft.training.collate import Collator, pack
from reasonft.training.datamodule import RecordsDataModule
from reasonft.training.losses import CrossEntropyTerm, LossComposition, UnlikelihoodTerm
from reasonft.training.module import StudentModule

pytestmark = pytest.mark.gpu

LOSS = LossComposition(
    {
        "ce": CrossEntropyTerm(),
        "ul": UnlikelihoodTerm(weight=0.3, reduction="sequence", loss_type="ul"),
    }
)


def _records(values: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Compute {v} + 3.",
            "response": f"<think>\n{v} + 3 = {v + 3}\n\nSo {v + 3}.\n</think>\n\\boxed{{{v + 3}}}",
            "loss_type": "ul" if i % 3 == 0 else "ce",
        }
        for i, v in enumerate(values)
    ]


def _batch(tokenizer: Any, values: list[int]) -> dict[str, Any]:
    data = RecordsDataModule(
        _records(values),
        tokenizer,
        micro_batch_size=len(values),
        loss_types=("ce", "ul"),
    )
    data.setup("fit")
    return Collator(tokenizer.pad_token_id, data.loss_types)(list(data.train_set))


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def test_bf16_mixed_loss_on_cuda_is_the_float32_cpu_loss(tiny_model, tiny_tokenizer) -> None:
    batch = _batch(tiny_tokenizer, [3, 12, 107, 5, 8, 61])
    cpu_module = StudentModule(copy.deepcopy(tiny_model), LOSS, chunk_tokens=7)
    cuda_module = StudentModule(copy.deepcopy(tiny_model).cuda(), LOSS, chunk_tokens=7)
    with torch.no_grad():
        reference = cpu_module.compute_loss(batch)[0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = cuda_module.compute_loss(_to(batch, "cuda"))[0]
    assert mixed.total.dtype == torch.float32  # the log-softmax runs in float32 under autocast
    torch.testing.assert_close(mixed.total.cpu(), reference.total, rtol=2e-2, atol=2e-2)
    for name in reference.terms:
        torch.testing.assert_close(
            mixed.terms[name].value.cpu(), reference.terms[name].value, rtol=3e-2, atol=2e-2
        )


def test_bf16_mixed_lightning_steps_on_cuda_train_float32_weights(
    tiny_model, tiny_tokenizer
) -> None:
    batch = _batch(tiny_tokenizer, [3, 12, 107, 5])
    model = copy.deepcopy(tiny_model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    module = StudentModule(model, LOSS, lr=1e-2, warmup_ratio=0.0, chunk_tokens=5)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    loader = DataLoader([batch, batch], batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 2
    after = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in after.values())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(after[k].detach().cpu(), before[k]) for k in before)


def test_packed_training_on_cuda_gives_the_padded_loss_and_gradients(
    tiny_model, tiny_tokenizer
) -> None:
    padded = _to(_batch(tiny_tokenizer, [3, 12, 107, 5, 8, 61]), "cuda")
    packed = {
        **padded,
        **_to(pack(padded["input_ids"].cpu(), padded["attention_mask"].cpu()), "cuda"),
    }
    results = []
    for batch in (padded, packed):
        model = copy.deepcopy(tiny_model).cuda().train()
        out = StudentModule(model, LOSS, chunk_tokens=5).compute_loss(batch)[0]
        out.total.backward()
        results.append((out.total.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_scores_on_cuda_are_the_cpu_scores(tiny_model, tiny_tokenizer) -> None:
    records = _records([3, 12, 107, 5])
    scorer = Scorer(method="all", window=1, batch_tokens=64, chunk_tokens=5, progress=False)
    on_cpu = scorer(records, tiny_model, tiny_tokenizer)[0]
    on_cuda = scorer(records, copy.deepcopy(tiny_model).cuda(), tiny_tokenizer)[0]
    for column in ("galp", "lalp", "ppl"):
        torch.testing.assert_close(
            torch.tensor(on_cuda[column]), torch.tensor(on_cpu[column]), rtol=1e-4, atol=1e-5
        )


def test_cuda_samples_do_not_depend_on_batching_or_order(tiny_model, tiny_tokenizer) -> None:
    problems = [
        {"prompt_id": "a", "prompt": "Compute 3 + 4.", "answer": "7"},
        {
            "prompt_id": "b",
            "prompt": "Compute (12 - 5) * 3. Let's reason step by step.",
            "answer": "21",
        },
        {"prompt_id": "c", "prompt": "Step 1: 8 / 2", "answer": "4"},
    ]
    model = copy.deepcopy(tiny_model).cuda()

    def responses(batch_size: int, order: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
        gen = HFGenerator(
            n=2,
            temperature=1.0,
            top_p=0.9,
            max_new_tokens=6,
            batch_size=batch_size,
            seed=7,
            progress=False,
        )
        return {
            (r["prompt_id"], r["sample_idx"]): r["response"]
            for r in gen.generate(order, model, tiny_tokenizer)
        }

    reference = responses(1, problems)
    assert responses(4, problems) == reference
    assert responses(6, problems[::-1]) == reference


def test_chunked_logprobs_keep_cuda_memory_far_below_the_logits() -> None:
    """Forward + backward at 2 x 4096 tokens and the real vocabulary: the peak rise stays under
    a quarter of the float32 [B, L, V] logits, which the plain `.logits` path does exceed."""
    from reasonft.models.loading import random_student

    vocab, batch, length = 151_936, 2, 4096
    with torch.device("cuda"):
        model = random_student(
            {
                "model_type": "qwen2",
                "vocab_size": vocab,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": length,
                "tie_word_embeddings": True,
            },
            seed=0,
            attn_implementation="sdpa",
        ).train()
    ids = torch.randint(0, vocab, (batch, length), device="cuda")
    mask = torch.ones_like(ids)
    logits_bytes = batch * length * vocab * 4

    def peak_rise(fn) -> int:
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    chunked = peak_rise(
        lambda: token_logprobs(model, ids, mask, mask.bool(), 256)[0].sum().backward()
    )
    plain = peak_rise(
        lambda: (
            model(input_ids=ids, attention_mask=mask)
            .logits.float()
            .log_softmax(-1)
            .gather(-1, ids[..., None])
            .sum()
            .backward()
        )
    )
    assert plain > logits_bytes  # the yardstick measures what it should
    assert chunked < logits_bytes / 4, (chunked / 2**20, logits_bytes / 2**20)


def test_train_stage_on_cuda_keeps_fp32_master_weights_from_a_bf16_model(tmp_path) -> None:
    """model.dtype=bfloat16 with trainer=gpu (bf16-mixed), through the pipeline's train stage:
    parameters and AdamW moments stay float32 on the device (training/precision.py)."""

    from reasonft.config import compose_config
    from reasonft.pipeline.runner import Pipeline

    tiny = [
        "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
        "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
        "model.build.hidden_size=32", "model.build.intermediate_size=64",
        "experiment=toy_sft", "select.n=8", "train.per_step.ce=4", "train.micro_batch_size=2",
        "trainer.max_steps=2", "logger=none", "callbacks.progress_bar=null",
    ]
    cfg = compose_config(overrides=[
        *tiny, "trainer=gpu", "model.dtype=bfloat16", "stages=[train]",
        f"paths.cache_dir={tmp_path}/cache", f"paths.output_dir={tmp_path}/run",
    ])
    pipeline = Pipeline(cfg)
    pipeline.run()
    ckpt_dir = pipeline.store.path("train", pipeline.key("train")).with_suffix(".checkpoints")
    ckpt = torch.load(next(ckpt_dir.glob("*.ckpt")), weights_only=False)
    assert {v.dtype for v in ckpt["state_dict"].values()} == {torch.float32}
    moments = [m for s in ckpt["optimizer_states"][0]["state"].values() for m in (s["exp_avg"], s["exp_avg_sq"])]
    assert moments and all(m.dtype == torch.float32 and m.device.type == "cuda" for m in moments)
