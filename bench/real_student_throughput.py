"""Scoring and training tokens/s on the real student (SmolLM2-135M-Instruct), reasonft against a
plain transformers forward / forward+backward on the same batches, side by side (A B A B ...).

The records are the toy world's teacher traces rendered as the smollm2_* presets render them
(data=toy_real: the OXA instruction, the chat template, `<|im_end|>\\n` after the response).

- score: reasonft's chunked log-probs (`token_logprobs`, what the scorer runs, no [B, L, V]
  logits) against `model(...).logits` -> log_softmax -> gather, response tokens only, no grad.
- train: the same chunked log-probs -> token-mean CE -> backward (what the train stage's loss
  runs, chunk_tokens of the smollm2 presets) against `model(..., labels=...).loss.backward()`.

    python bench/real_student_throughput.py            # prints a table and the ratios
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import CONF_DIR, PROJECT_ROOT
from reasonft.data.prompts import IGNORE_INDEX, PromptFormat
from reasonft.data.toy import ToyWorld
from reasonft.models.gguf import GGUFStudent
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.scoring.logprobs import token_logprobs


def real_student(cache: Path) -> str:
    build = OmegaConf.load(CONF_DIR / "model" / "smollm2.yaml").build
    return GGUFStudent(package=build.package, member=build.member, sha256=build.sha256).build(cache)


def batches(tokenizer: Any, n: int, batch: int) -> list[dict[str, torch.Tensor]]:
    data = OmegaConf.load(CONF_DIR / "data" / "toy_real.yaml")
    fmt = PromptFormat(suffix=data.prompt_suffix, system_prompt=None, response_end="template")
    pool = ToyWorld(n_train=max(n, 8)).teacher_pool("train").select(range(n))
    encoded = [fmt.encode(p, r, tokenizer) for p, r in zip(pool["prompt"], pool["response"])]
    out = []
    for start in range(0, n, batch):
        rows = encoded[start : start + batch]
        width = max(len(r["input_ids"]) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


def scored_tokens(b: dict[str, torch.Tensor]) -> int:
    return int((b["labels"][:, 1:] != IGNORE_INDEX).sum())


def reasonft_logp(model: Any, b: dict[str, torch.Tensor], chunk: int) -> torch.Tensor:
    target = b["labels"] != IGNORE_INDEX
    target[:, 0] = False
    logp, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], target, chunk, with_entropy=False)
    return logp[target]


def plain_logp(model: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = b["input_ids"][:, 1:]
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked[b["labels"][:, 1:] != IGNORE_INDEX]


def timed(fn: Any, data: list[dict[str, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for b in data:
        fn(b)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="micro-batch (the smollm2 presets' 4)")
    parser.add_argument("--repeats", type=int, default=3, help="A B pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-tokens", type=int, default=None, help="default: the smollm2 presets'")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = OmegaConf.load(CONF_DIR / "experiment" / "base" / "smollm2.yaml")
    chunk = args.chunk_tokens or int(preset.train.chunk_tokens)
    path = real_student(Path(os.environ.get("REASONFT_CACHE") or PROJECT_ROOT / ".cache" / "reasonft"))
    model = load_student(path, dtype="float32").eval()
    data = batches(load_tokenizer(path), args.records, args.batch)
    tokens = sum(scored_tokens(b) for b in data)
    seqs = sum(int(b["attention_mask"].sum()) for b in data)

    with torch.no_grad():  # the two agree before anything is timed
        gap = max((reasonft_logp(model, b, chunk) - plain_logp(model, b)).abs().max().item() for b in data)

    def score_a(b: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            reasonft_logp(model, b, chunk)

    def score_b(b: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            plain_logp(model, b)

    def train_a(b: dict[str, torch.Tensor]) -> None:
        model.zero_grad(set_to_none=True)
        (-reasonft_logp(model, b, chunk).mean()).backward()

    def train_b(b: dict[str, torch.Tensor]) -> None:
        model.zero_grad(set_to_none=True)
        model(**b).loss.backward()

    times: dict[str, list[float]] = {k: [] for k in ("score_a", "score_b", "train_a", "train_b")}
    model.train()
    for _ in range(args.repeats):
        for name, fn in (("score_a", score_a), ("score_b", score_b), ("train_a", train_a), ("train_b", train_b)):
            times[name].append(timed(fn, data))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "records": args.records, "batch": args.batch, "chunk_tokens": chunk, "threads": args.threads,
        "scored_tokens": tokens, "sequence_tokens": seqs, "max_logp_gap": gap,
        "score_tokens_per_s": {"reasonft": seqs / med["score_a"], "transformers": seqs / med["score_b"]},
        "train_tokens_per_s": {"reasonft": seqs / med["train_a"], "transformers": seqs / med["train_b"]},
        "score_ratio": med["score_b"] / med["score_a"],
        "train_ratio": med["train_b"] / med["train_a"],
        "seconds": times,
    }
    print(f"SmolLM2-135M, {args.records} toy_real records in micro-batches of {args.batch}, "
          f"{args.threads} threads, chunk_tokens {chunk}; log-probs agree to {gap:.1e}")
    print("(tokens/s count prompt + response tokens; the responses' are the scored ones)")
    print("| pass | reasonft tokens/s | transformers tokens/s | reasonft / transformers |")
    print("|---|---|---|---|")
    for name in ("score", "train"):
        tps = result[f"{name}_tokens_per_s"]
        print(f"| {name} | {tps['reasonft']:.0f} | {tps['transformers']:.0f} | {result[f'{name}_ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
