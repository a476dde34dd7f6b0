"""Padded against packed (padding-free) training micro-batches, side by side.

The same records of very different lengths, the same model and the same optimiser step
(`StudentModule.compute_loss` + backward + AdamW), once with right-padded micro-batches and once
with `train.packing` (the sequences end to end in one row). Runs alternate padded, packed,
padded, ... in one process after a warm-up step each; tokens/s counts the real (unpadded) tokens.
Prints the mean of each, the ratio packed / padded, the padding share of the padded batches, and
the loss of both on the first batch (they must agree).

    .venv/bin/python bench/packing_throughput.py
    .venv/bin/python bench/packing_throughput.py --batch 8 --min-length 32 --max-length 1024 --repeats 3

On CPU the packed row is attended with a dense block-causal mask, so attention does T^2 work over
the whole row; with FlashAttention-2 on a GPU transformers attends each sequence alone.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from reasonft.models.loading import random_student
from reasonft.training.collate import Collator
from reasonft.training.losses import CrossEntropyTerm, LossComposition
from reasonft.training.module import StudentModule

MODEL = {
    "model_type": "qwen2",
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def examples(n: int, min_length: int, max_length: int, seed: int) -> list[dict]:
    """Token sequences of uniformly drawn lengths; the first quarter of each is the prompt."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(min_length, max_length)
        ids = [rng.randrange(3, MODEL["vocab_size"]) for _ in range(length)]
        prompt = max(1, length // 4)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "loss_type_id": 0,
                    "prompt_id": str(i)})
    return out


def step_seconds(module: StudentModule, optimizer: torch.optim.Optimizer, batch: dict) -> tuple[float, float]:
    start = time.perf_counter()
    out = module.compute_loss(batch)[0]
    out.total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(out.total.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    parser.add_argument("--min-length", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="timed micro-batches per run")
    parser.add_argument("--repeats", type=int, default=2, help="padded/packed pairs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = examples(args.batch * args.steps, args.min_length, args.max_length, seed=0)
    batches = {
        packing: [Collator(0, ("ce",), packing=packing)(data[i : i + args.batch])
                  for i in range(0, len(data), args.batch)]
        for packing in (False, True)
    }
    real = sum(len(e["input_ids"]) for e in data)
    padded_positions = sum(b["input_ids"].numel() for b in batches[False])
    base = random_student(MODEL, seed=0).train()
    loss = LossComposition({"ce": CrossEntropyTerm()})

    first_loss = {}
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for packing in (False, True):
            model = copy.deepcopy(base)
            module = StudentModule(model, loss, chunk_tokens=1024)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            step_seconds(module, optimizer, batches[packing][0])  # warm-up, untimed
            model.load_state_dict(base.state_dict())
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            seconds = 0.0
            for index, batch in enumerate(batches[packing]):
                took, value = step_seconds(module, optimizer, batch)
                seconds += took
                if index == 0:
                    first_loss[packing] = value
            rates[packing].append(real / seconds)
            print(f"{'packed' if packing else 'padded'}: {real / seconds:,.0f} tokens/s")

    padded, packed = statistics.fmean(rates[False]), statistics.fmean(rates[True])
    pairs = [b / a for a, b in zip(rates[False], rates[True])]
    print(
        f"\n{args.steps} micro-batches of {args.batch} sequences, lengths {args.min_length}-{args.max_length} "
        f"({real:,} real tokens; padding {1 - real / padded_positions:.0%} of the padded positions), "
        f"{args.threads} threads"
    )
    print(f"padded {padded:,.0f} tokens/s, packed {packed:,.0f} tokens/s: packed / padded = {packed / padded:.2f} "
          f"(pairs {', '.join(f'{r:.2f}' for r in pairs)})")
    print(f"first-batch loss: padded {first_loss[False]:.6f}, packed {first_loss[True]:.6f}")


if __name__ == "__main__":
    main()
