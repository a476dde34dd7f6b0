"""Training throughput on CPU: reasonft SFT (StudentModule + RecordsDataModule + pl.Trainer) against
TRL's SFTTrainer, same model, same token sequences, same steps.

    .venv/bin/python bench/train_throughput.py                      # 5 steps x (A B A B), 2 threads
    .venv/bin/python bench/train_throughput.py --chunk-tokens 4096 --repeats 3 --json out.json

Model: random Qwen2 (hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 1024, vocab 151,936, tied
embeddings, float32, sdpa). Data: toy arithmetic reasoning, tokenised once by reasonft
(`encode_record`: chat template, prompt masked) and cut to exactly `--length` tokens, so both
trainers see identical batches of `--batch` x `--length` tokens without padding and train on the
completion tokens only (TRL: the same ids with `completion_mask`, `completion_only_loss=True`).
Both: AdamW (betas 0.9/0.95, weight decay 0.1, lr 1e-5, cosine), gradient clipping 1.0, no
gradient checkpointing, float32 (TRL's defaults of gradient checkpointing and bf16 are turned off
so that the two do the same work), no checkpoint saving, no logger.

Each run is its own subprocess (so peak RSS is per run), alternating reasonft, TRL, reasonft,
TRL, ...; the first `--warmup` steps of a run are not timed. Tokens/s counts every input token of
the timed steps. Prints per-run figures, the mean per trainer, the ratio reasonft / TRL (with the
ratio of each adjacent pair, which shows how much the shared CPU moved) and the load average.

`TrainRun` also takes the device, the precision, activation checkpointing and the model shape:
bench/gpu_check.py calls `make_inputs` and `measure` with the 1.5B shape, bf16-mixed, on CUDA.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

MODEL = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
}
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-5, (0.9, 0.95), 0.1, 1.0
TRAIN_CONFIG = Path(str(resources.files("reasonft.conf"))) / "train" / "default.yaml"


def configured_chunk_tokens() -> int:
    """`train.chunk_tokens` as conf/train/default.yaml sets it: what a run uses unless told
    otherwise, so what this bench measures unless told otherwise."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(TRAIN_CONFIG).chunk_tokens)


@dataclass(frozen=True)
class TrainRun:
    """What one timed run trains on and how; the same for reasonft and TRL."""

    steps: int
    warmup: int
    batch: int
    length: int
    chunk_tokens: int = field(default_factory=configured_chunk_tokens)
    model: dict[str, Any] = field(default_factory=lambda: dict(MODEL))
    accelerator: str = "cpu"  # "cpu" or "gpu"
    precision: str = "32-true"  # Lightning's name; "bf16-mixed" is TRL's bf16=True
    gradient_checkpointing: bool = False

    @property
    def device(self) -> str:
        return "cuda" if self.accelerator == "gpu" else "cpu"


# ---- inputs (parent) ------------------------------------------------------------------------


def synthetic_records(n: int, seed: int = 0, n_steps: int = 60) -> list[dict[str, Any]]:
    """Arithmetic problems with long step-by-step responses (60 steps: well over 512 tokens)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        steps = []
        value = a
        for k in range(n_steps):
            c = rng.randint(2, 9)
            op = rng.choice(["+", "-", "*"])
            new = value + c if op == "+" else value - c if op == "-" else value * c % 1000
            steps.append(f"Step {k + 1}: {value} {op} {c} = {new}.")
            value = new
        response = "<think>\n" + "\n".join(steps) + f"\n</think>\nThe answer is \\boxed{{{value}}}."
        records.append(
            {
                "prompt_id": f"b{i}",
                "prompt": f"Start from {a} and apply the steps with {b}.",
                "response": response,
            }
        )
    return records


def make_inputs(workdir: Path, n_records: int, length: int) -> None:
    """Tokenizer, records (for reasonft) and the same token ids + completion masks (for TRL)."""
    from reasonft.data.records import as_dataset
    from reasonft.io import write_json, write_records
    from reasonft.models.tokenizer import save_tokenizer, train_tokenizer
    from reasonft.training.collate import encode_record

    # A step is about ten tokens of the 1000-token vocabulary below: length / 4 steps is ample.
    records = synthetic_records(n_records, n_steps=max(60, length // 4))
    tokenizer = train_tokenizer(
        [r["prompt"] + " " + r["response"] for r in records], vocab_size=1000
    )
    save_tokenizer(tokenizer, workdir / "tokenizer")
    write_records(as_dataset(records), workdir / "records.parquet")
    rows = []
    for record in records:
        ex = encode_record(record["prompt"], record["response"], tokenizer)
        if len(ex["input_ids"]) < length:
            raise ValueError(
                f"record {record['prompt_id']}: {len(ex['input_ids'])} tokens, fewer than {length}"
            )
        ids, labels = ex["input_ids"][:length], ex["labels"][:length]
        rows.append({"input_ids": ids, "completion_mask": [int(label != -100) for label in labels]})
    write_json(rows, workdir / "tokenised.json")


# ---- workers (subprocesses) -------------------------------------------------------------------


def _model(tokenizer: Any, run: TrainRun) -> Any:
    """Random float32 weights made on the run's device (a 1.5B model builds in seconds there)."""
    import torch

    from reasonft.models.loading import random_student

    with torch.device(run.device):
        model = random_student(
            {
                **run.model,
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            seed=0,
            attn_implementation="sdpa",
        )
    model.config.use_cache = False
    return model


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_reasonft(workdir: Path, run: TrainRun) -> dict[str, Any]:
    import functools

    import pytorch_lightning as pl
    import torch

    from reasonft.io import read_records
    from reasonft.models.loading import load_tokenizer
    from reasonft.training.datamodule import RecordsDataModule
    from reasonft.training.losses import CrossEntropyTerm, LossComposition
    from reasonft.training.module import StudentModule
    from reasonft.training.schedules import warmup_cosine

    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    model = _model(tokenizer, run)
    loss = LossComposition({"ce": CrossEntropyTerm(weight=1.0, reduction="token", loss_type="ce")})
    data = RecordsDataModule(
        read_records(workdir / "records.parquet"),
        tokenizer,
        max_length=run.length,
        overlength="truncate",
        micro_batch_size=run.batch,
        per_step={"ce": run.batch},
        seed=0,
        loss_types=loss.loss_types,
    )
    module = StudentModule(
        model,
        loss,
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY),
        scheduler=functools.partial(warmup_cosine, warmup_ratio=0.0),
        chunk_tokens=run.chunk_tokens,
        gradient_checkpointing=run.gradient_checkpointing,
    )
    times: list[float] = []
    tokens: list[int] = []

    class StepClock(pl.Callback):
        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            times.append(time.perf_counter())
            tokens.append(int(batch["attention_mask"].sum()))

    trainer = pl.Trainer(
        accelerator=run.accelerator,
        devices=1,
        max_steps=run.steps,
        precision=run.precision,
        gradient_clip_val=CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[StepClock()],
    )
    data.setup("fit")
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return {"start": start, "times": times, "tokens": tokens}


def run_trl(workdir: Path, run: TrainRun) -> dict[str, Any]:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from reasonft.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    model = _model(tokenizer, run)
    rows = json.loads((workdir / "tokenised.json").read_text())
    train = datasets.Dataset.from_list(rows)
    times: list[float] = []
    tokens: list[int] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter())
            tokens.append(run.batch * run.length)

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=run.batch,
            gradient_accumulation_steps=1,
            max_steps=run.steps,
            learning_rate=LR,
            adam_beta1=BETAS[0],
            adam_beta2=BETAS[1],
            weight_decay=WEIGHT_DECAY,
            max_grad_norm=CLIP,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            gradient_checkpointing=run.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},  # as reasonft's
            bf16=run.precision == "bf16-mixed",
            fp16=False,
            use_cpu=run.accelerator == "cpu",
            completion_only_loss=True,
            max_length=run.length,
            packing=False,
            padding_free=False,
            dataloader_num_workers=0,
            save_strategy="no",
            report_to=[],
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=train,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        start = time.perf_counter()
        trainer.train()
    return {"start": start, "times": times, "tokens": tokens}


def measure(engine: str, workdir: Path, run: TrainRun) -> dict[str, Any]:
    """Train `run.steps` steps with one engine; tokens/s over the steps after `run.warmup`.

    On CUDA the peak is the most memory the caching allocator handed out during this run
    (`max_memory_allocated`, reset first); on CPU it is the process's peak RSS so far.
    """
    import gc

    import torch

    torch.manual_seed(0)
    on_cuda = run.device == "cuda"
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trace = run_reasonft(workdir, run) if engine == "reasonft" else run_trl(workdir, run)
    if on_cuda:
        torch.cuda.synchronize()
        peak_mb, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak_mb, peak_kind = _peak_rss_mb(), "process_peak_rss"
    gc.collect()
    times, tokens = trace["times"], trace["tokens"]
    if len(times) != run.steps:
        raise RuntimeError(f"{engine}: {len(times)} optimiser steps timed, expected {run.steps}")
    timed = times[run.warmup - 1 :] if run.warmup > 0 else [trace["start"], *times]
    seconds = timed[-1] - timed[0]
    n_tokens = sum(tokens[run.warmup :])
    return {
        "engine": engine,
        "tokens_per_s": n_tokens / seconds,
        "timed_steps": run.steps - run.warmup,
        "seconds": seconds,
        "step_seconds": [b - a for a, b in itertools.pairwise(timed)],
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
    }


def worker(engine: str, workdir: Path, run: TrainRun, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    result = measure(engine, workdir, run)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


# ---- driver ---------------------------------------------------------------------------------


def _run_worker(engine: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--workdir",
        str(workdir),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--threads",
        str(args.threads),
        "--chunk-tokens",
        str(args.chunk_tokens),
    ]
    load = os.getloadavg()[0]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of a run left untimed")
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=configured_chunk_tokens(),
        help="reasonft: positions per chunk of the vocabulary projection (default: "
        "train.chunk_tokens of conf/train/default.yaml, %(default)s); it sets reasonft's peak "
        "memory (TRL tiles with fixed sizes)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", choices=["reasonft", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be in [0, --steps)")
    if args.worker:
        run = TrainRun(
            steps=args.steps,
            warmup=args.warmup,
            batch=args.batch,
            length=args.length,
            chunk_tokens=args.chunk_tokens,
        )
        worker(args.worker, args.workdir, run, args.threads)
        return

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(tmp)
        make_inputs(workdir, n_records=max(64, args.batch * args.steps), length=args.length)
        runs = []
        for repeat in range(args.repeats):
            for engine in ("reasonft", "trl"):
                result = _run_worker(engine, workdir, args)
                runs.append(result)
                print(
                    f"[{repeat + 1}/{args.repeats}] {engine:8s} "
                    f"{result['tokens_per_s']:8.1f} tokens/s  "
                    f"peak RSS {result['peak_rss_mb']:7.0f} MB  ({result['timed_steps']} steps in "
                    f"{result['seconds']:.1f} s, load avg before {result['load_before']:.2f})",
                    flush=True,
                )
    by_engine = {
        e: [r["tokens_per_s"] for r in runs if r["engine"] == e] for e in ("reasonft", "trl")
    }
    mean = {e: statistics.fmean(v) for e, v in by_engine.items()}
    pair_ratios = [a / b for a, b in zip(by_engine["reasonft"], by_engine["trl"])]
    summary = {
        "settings": {
            k: getattr(args, k)
            for k in ("steps", "warmup", "repeats", "batch", "length", "threads", "chunk_tokens")
        },
        "model": MODEL,
        "runs": runs,
        "tokens_per_s_mean": mean,
        "tokens_per_s_spread": {e: (min(v), max(v)) for e, v in by_engine.items()},
        "peak_rss_mb_max": {
            e: max(r["peak_rss_mb"] for r in runs if r["engine"] == e) for e in by_engine
        },
        "ratio_reasonft_over_trl": mean["reasonft"] / mean["trl"],
        "pair_ratios": pair_ratios,
    }
    print()
    for engine in ("reasonft", "trl"):
        lo, hi = summary["tokens_per_s_spread"][engine]
        print(
            f"{engine:8s} mean {mean[engine]:8.1f} tokens/s (runs {lo:.1f} .. {hi:.1f}), "
            f"peak RSS {summary['peak_rss_mb_max'][engine]:.0f} MB"
        )
    print(
        f"ratio reasonft / TRL = {summary['ratio_reasonft_over_trl']:.2f} "
        f"(pairs: {', '.join(f'{r:.2f}' for r in pair_ratios)}; target >= 1.0)"
    )
    if args.json:
        from reasonft.io import write_json

        write_json(summary, args.json)


if __name__ == "__main__":
    main()
