"""Scoring throughput: GALP vs exact LALP vs banded LALP vs a naive per-window loop, and peak memory.

A random Qwen2 (by default the real vocabulary, 151,936, and a few small layers), on CPU in
float32, scores a pool of multi-step responses (paragraph steps, with prompts):

- galp: `Scorer(method="galp")`, one pass over prompt + response per record;
- lalp: `Scorer(method="lalp", window=k)`, exact (every step re-encoded from its window start);
- banded: `Scorer(method="lalp", window=k, lalp_pass="banded")`, one masked pass (approximate);
- flattened: exact LALP with transformers' `DataCollatorWithFlattening` packing the window
  passes (each with its own copy of the prompt) instead of `scoring.lalp`'s packing;
- naive: `scoring.reference.lalp`, for every step one separate forward over prompt + window with
  full logits at every position, log_softmax (what an implementation without packing/caching does).

`--window` takes an integer k or a fraction f of the preceding steps (0.25). The layer-dominated
shape (many layers, a narrow vocabulary: the transformer layers, which exact LALP runs once per
window token, dominate as at the 1.5B and 7B shapes; LALP applies the vocabulary projection only
once per token) on R1-length traces:

    .venv/bin/python bench/score_throughput.py --only throughput --layers 12 --vocab 1024 \
        --responses 3 --min-steps 60 --max-steps 300 --window 0.25 --methods galp,lalp,banded

The methods run in turns, rotated every round, so that load from other processes on a shared
CPU hits them alike; ratios are taken inside each round and their median is reported.

Peak memory: each variant runs in a fresh subprocess on the same batch; the figure is the rise
of the peak resident set (`ru_maxrss`) over the resident set just before the call, so model
weights and import costs cancel out. The full-logit variant is one padded forward with
`model(...).logits` (what `[batch, length, vocab]` costs); the chunked variants use the
Scorer.

    .venv/bin/python bench/score_throughput.py                 # defaults: 16 responses, 4 layers
    .venv/bin/python bench/score_throughput.py --layers 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithFlattening

from reasonft.data.prompts import build_prompt
from reasonft.models.loading import random_student
from reasonft.models.tokenizer import train_tokenizer
from reasonft.scoring import averages, reference
from reasonft.scoring.batching import first_fit_decreasing
from reasonft.scoring.lalp import WindowSpec, window_groups
from reasonft.scoring.logprobs import logprobs_at
from reasonft.scoring.scorer import Scorer

VOCAB = 151_936


def make_pool(n: int, min_steps: int, max_steps: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic arithmetic traces: one paragraph per step, a few sentences each."""
    rng = random.Random(seed)
    words = ["so", "then", "we", "add", "multiply", "check", "the", "result", "again", "carry"]
    records = []
    for i in range(n):
        steps = []
        for s in range(rng.randint(min_steps, max_steps)):
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            filler = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
            steps.append(f"Step {s + 1}: {a} + {b} = {a + b}, {filler}. Next {a} * {b} = {a * b}.")
        problem = f"Problem {i}: compute the sum and product of the numbers below. " + " ".join(
            str(rng.randint(2, 999)) for _ in range(rng.randint(4, 16))
        )
        records.append(
            {
                "prompt_id": f"p{i}",
                "prompt": problem,
                "response": "\n\n".join(steps) + "\n\n\\boxed{1}",
            }
        )
    return records


def build(args: argparse.Namespace) -> tuple[Any, Any, list[dict[str, Any]]]:
    torch.set_num_threads(args.threads)
    records = make_pool(args.responses, args.min_steps, args.max_steps, seed=0)
    tokenizer = train_tokenizer([r["prompt"] + r["response"] for r in records], vocab_size=512)
    config = {
        "model_type": "qwen2",
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "max_position_embeddings": 32768,  # R1-length traces (300 steps) fit untruncated
        "tie_word_embeddings": True,
    }
    model = random_student(config, dtype="float32", seed=0).eval()
    return model, tokenizer, records


def count_window_tokens(examples: list[Any], window: WindowSpec) -> int:
    """Response tokens that exact LALP re-encodes: every window group from its first step."""
    total = 0
    for ex in examples:
        bounds = ex.step_bounds()
        total += sum(
            bounds[last][1] - bounds[s][0] for s, _, last in window_groups(len(bounds), window)
        )
    return total


def naive_lalp(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], window: WindowSpec
) -> list[float]:
    """`scoring.reference.lalp`: one separate forward per step window, logits at every position."""
    scorer = Scorer(method="lalp", window=window, progress=False)
    return [
        reference.lalp(
            model,
            ex.prompt_ids.tolist(),
            [ex.response_ids[a:e].tolist() for a, e in ex.step_bounds()],
            window,
        )
        for ex in scorer.encode(records, range(len(records)), tokenizer)
    ]


def flattened_lalp(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], window: WindowSpec,
    batch_tokens: int, chunk_tokens: int,
) -> list[float]:
    """Exact LALP with transformers' `DataCollatorWithFlattening` instead of `scoring.lalp`'s own
    packing: every window pass is its own sequence (prompt + window steps, so the prompt is
    encoded again for each pass), flattened into rows with
    position ids restarting per sequence (no cache, so transformers masks each sequence alone).
    The collator makes one row per call, so rows are not batched."""
    scorer = Scorer(method="lalp", window=window, progress=False)
    examples = scorer.encode(records, range(len(records)), tokenizer)
    passes = []  # (example, sequence ids, position of the first scored token, its response index)
    for b, ex in enumerate(examples):
        bounds = ex.step_bounds()
        for start, first, last in window_groups(len(bounds), window):
            a, e = bounds[start][0], bounds[last][1]
            seq = np.concatenate([ex.prompt_ids, ex.response_ids[a:e]])
            passes.append((b, seq, len(ex.prompt_ids) + bounds[first][0] - a, bounds[first][0]))
    token_logps = [np.full(len(ex.response_ids), np.nan) for ex in examples]
    collate = DataCollatorWithFlattening(return_position_ids=True)
    lengths = [len(p[1]) for p in passes]
    # Rows as long as the longest pass, as `scoring.lalp` packs: on CPU a flattened row is
    # attended with one dense mask over the whole row, so longer rows cost quadratically more.
    for row in first_fit_decreasing(lengths, min(batch_tokens, max(lengths))):
        batch = collate([{"input_ids": passes[i][1].tolist()} for i in row])
        with torch.inference_mode():
            hidden = model.base_model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).last_hidden_state[0]
            offset, source, targets, where = 0, [], [], []
            for i in row:
                b, seq, at, first_token = passes[i]
                pos = np.arange(max(at, 1), len(seq))
                source.append(offset + pos - 1)
                targets.append(seq[pos])
                where.append((b, first_token + pos - at))
                offset += len(seq)
            logp = logprobs_at(hidden[None], model, source, targets, chunk_tokens)
        done = 0
        for b, tokens in where:
            token_logps[b][tokens] = logp[done : done + len(tokens)]
            done += len(tokens)
    return [
        averages.lalp(averages.step_means(lp, ex.token_step, ex.n_steps))
        for lp, ex in zip(token_logps, examples)
    ]


def timed(fn) -> tuple[float, float, Any]:
    """Wall seconds, process CPU seconds (user + system, all threads), result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def throughput(args: argparse.Namespace) -> None:
    model, tokenizer, records = build(args)
    common = {
        "batch_tokens": args.batch_tokens,
        "chunk_tokens": args.chunk_tokens,
        "progress": False,
    }
    scorers = {
        "galp": Scorer(method="galp", **common),
        "lalp": Scorer(method="lalp", window=args.window, **common),
        "banded": Scorer(method="lalp", window=args.window, lalp_pass="banded", **common),
    }
    examples = scorers["lalp"].encode(records, range(len(records)), tokenizer)
    n_resp = sum(len(ex.response_ids) for ex in examples)
    n_prompt = sum(len(ex.prompt_ids) for ex in examples)
    n_steps = [ex.n_steps for ex in examples]
    window_tokens = count_window_tokens(examples, args.window)
    print(
        f"model: Qwen2 vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, intermediate "
        f"{args.intermediate}, heads {args.heads}/{args.kv_heads}, float32, CPU threads {args.threads}"
    )
    print(
        f"pool: {len(records)} responses, {sum(n_steps)} paragraph steps ({min(n_steps)}-"
        f"{max(n_steps)} a response), {n_resp} response tokens (mean {n_resp / len(records):.0f}), "
        f"{n_prompt} prompt tokens; window {args.window}: exact LALP re-encodes {window_tokens} "
        f"window tokens ({window_tokens / n_resp:.2f}x the response), banded LALP 1.00x"
    )
    runs = {
        name: (lambda s=scorer, col=column: s(records, model, tokenizer)[0][col])
        for name, scorer, column in (
            ("galp", scorers["galp"], "galp"),
            ("lalp", scorers["lalp"], "lalp"),
            ("banded", scorers["banded"], "lalp"),
        )
    }
    runs["naive"] = lambda: naive_lalp(model, tokenizer, records, args.window)
    runs["flattened"] = lambda: flattened_lalp(
        model, tokenizer, records, args.window, args.batch_tokens, args.chunk_tokens
    )
    names = args.methods.split(",")
    unknown = sorted(set(names) - set(runs))
    if unknown or "galp" not in names:
        raise SystemExit(f"--methods {args.methods}: choose among {list(runs)}, galp included")
    timed(lambda: scorers["galp"](records[:1], model, tokenizer))  # warm-up
    walls, cpus = [], []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        wall, cpu, values = {}, {}, {}
        for name in order:
            wall[name], cpu[name], values[name] = timed(runs[name])
        walls.append(wall)
        cpus.append(cpu)
        line = f"round {r + 1} ({' -> '.join(order)}): wall " + " ".join(
            f"{n} {wall[n]:.2f}s" for n in names
        ) + " | cpu " + " ".join(f"{n} {cpu[n]:.2f}s" for n in names)
        if "flattened" in values and "lalp" in values:
            diff = np.max(np.abs(np.asarray(values["lalp"]) - np.asarray(values["flattened"])))
            line += f" | max |lalp - flattened| {diff:.1e}"
        if "naive" in values and "lalp" in values:
            diff = np.max(np.abs(np.asarray(values["lalp"]) - np.asarray(values["naive"])))
            line += f" | max |lalp - naive| {diff:.1e}"
        if "banded" in values and "lalp" in values:
            diff = np.max(np.abs(np.asarray(values["lalp"]) - np.asarray(values["banded"])))
            line += f" | max |lalp - banded| {diff:.1e} (random weights)"
        print(line, flush=True)
    for name in names:
        t = statistics.median(x[name] for x in walls)
        c = statistics.median(x[name] for x in cpus)
        print(f"{name:>6}: median wall {t:.2f}s ({n_resp / t:,.0f} response tok/s), cpu {c:.2f}s")
    pairs = [(n, "galp") for n in names if n != "galp"]
    if "lalp" in names and "banded" in names:
        pairs.append(("lalp", "banded"))
    for label, table in (("wall", walls), ("cpu ", cpus)):
        parts = []
        for a, b in pairs:
            ratios = [x[a] / x[b] for x in table]
            parts.append(
                f"{a}/{b} {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(f"RATIOS {label} (median of {len(table)} rounds, min-max): " + "; ".join(parts))


def memory_probe(args: argparse.Namespace) -> None:
    """Runs in a subprocess: peak RSS rise of one variant on the first `--memory-batch` records."""
    model, tokenizer, records = build(args)
    records = records[: args.memory_batch]
    with torch.inference_mode():  # warm-up: allocator, kernels
        model.base_model(input_ids=torch.ones((1, 8), dtype=torch.long))
    before = _rss_kb()
    if args.memory_probe == "full_logits":
        seqs = [
            tokenizer(
                build_prompt(r["prompt"], tokenizer) + r["response"], add_special_tokens=False
            )["input_ids"]
            for r in records
        ]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)], att[b, : len(s)] = torch.tensor(s), 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=att).logits
            logp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])
        extra = {"logits_bytes": logits.numel() * logits.element_size(), "tokens": int(att.sum())}
        del logp, logits
    else:
        method = "galp" if args.memory_probe == "galp_chunked" else "lalp"
        Scorer(
            method=method,
            window=args.window,
            batch_tokens=args.batch_tokens,
            chunk_tokens=args.chunk_tokens,
            progress=False,
        )(records, model, tokenizer)[0]
        extra = {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rise_mb": (peak - before) / 1024, **extra}))


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def memory(args: argparse.Namespace) -> None:
    print(
        f"peak memory, one batch of {args.memory_batch} responses, chunk_tokens {args.chunk_tokens} "
        "(fresh subprocess each):"
    )
    for probe in ("full_logits", "galp_chunked", "lalp_chunked"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-probe", probe]
        out = (
            subprocess.run(cmd, capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        result = json.loads(out)
        line = f"  {probe:>13}: peak RSS rise {result['peak_rise_mb']:8.1f} MB"
        if "logits_bytes" in result:
            line += f"  (the [B, L, vocab] logits alone: {result['logits_bytes'] / 2**20:.1f} MB, {result['tokens']} tokens)"
        print(line)


def window_arg(text: str) -> WindowSpec:
    """`4` is k = 4 steps; `0.25` (or `1.0`) a fraction of the preceding steps."""
    return float(text) if "." in text else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=16)
    parser.add_argument("--min-steps", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument(
        "--window", type=window_arg, default=4, help="integer k, or a fraction f in (0, 1] (0.25)"
    )
    parser.add_argument(
        "--methods",
        default="galp,lalp,naive",
        help="comma-separated, galp first among galp, lalp, banded, flattened, naive",
    )
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--chunk-tokens", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--only", choices=["throughput", "memory"])
    parser.add_argument("--memory-probe", choices=["full_logits", "galp_chunked", "lalp_chunked"])
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args)
        return
    if args.only != "memory":
        throughput(args)
    if args.only != "throughput":
        memory(args)


if __name__ == "__main__":
    main()
