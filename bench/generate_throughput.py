"""Throughput of the transformers generation backend (HFGenerator) on CPU.

Two random-weight students: (a) the toy student's shape with the toy world's tokenizer, and
(b) the Qwen2.5-Math-1.5B shape (../shared/reference/qwen2.5-math-1.5b.config.json). Random
weights rarely emit a stop token, so nearly every sample runs to max_new_tokens: the figures
are decode throughput. The peer, measured in the same run on the same left-padded batches, is
transformers' own sampling (`generate(do_sample=True)`, global RNG, not batch-independent): the
ratio is the cost of the per-sample seeded sampler.

    .venv/bin/python bench/generate_throughput.py                 # both models
    .venv/bin/python bench/generate_throughput.py --only toy --prompts 32 --n 4

`--vllm` (in .venv-vllm: `make test-vllm` builds it) measures instead the vLLM backend
(VLLMGenerator on vLLM's CPU build) beside the transformers backend (HFGenerator) on the same
prompts, model, n and sampling settings, in tokens/s and as a ratio: the toy student's shape
with heads of 32 (4 heads; vLLM's CPU attention takes no head of 16), and any checkpoint folder
given with --model-path (e.g. SmolLM2-135M-Instruct, real weights and its own tokenizer). vLLM's
CPU engine binds one core and reserves the other on this 2-core machine, so the transformers
backend runs on one thread too (--threads). The engine's start is timed apart, not in tok/s.

    .venv-vllm/bin/python bench/generate_throughput.py --vllm --prompts 32 --n 4 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from reasonft.data.prompts import PromptFormat
from reasonft.data.toy import ToyWorld
from reasonft.generation.hf import HFGenerator
from reasonft.generation.inputs import prompt_token_ids, stop_token_ids
from reasonft.models.loading import load_student, load_tokenizer, random_student
from reasonft.models.tokenizer import save_tokenizer, train_tokenizer
from reasonft.models.toy import ToyStudentBuilder

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def native_sampling(model, tokenizer, problems, n, batch_size, max_new_tokens, temperature, top_p) -> tuple[int, int, float]:
    """(samples, generated tokens, seconds) with generate(do_sample=True) on the same batches."""
    ids = prompt_token_ids(list(problems["prompt"]), tokenizer, PromptFormat())
    rows = sorted((i for i in range(len(ids)) for _ in range(n)), key=lambda i: -len(ids[i]))
    stops = stop_token_ids(tokenizer, None, ["<|im_end|>"])
    pad = tokenizer.pad_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
        top_k=0, eos_token_id=stops, pad_token_id=pad, use_cache=True,
    )
    saved, model.generation_config = model.generation_config, GenerationConfig()
    tokens, start = 0, time.perf_counter()
    try:
        for begin in range(0, len(rows), batch_size):
            batch = [ids[i] for i in rows[begin : begin + batch_size]]
            width = max(map(len, batch))
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for r, seq in enumerate(batch):
                input_ids[r, width - len(seq) :] = torch.tensor(seq)
                mask[r, width - len(seq) :] = 1
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            new = out[:, width:]
            for row in new.tolist():
                stop_at = next((j for j, t in enumerate(row) if t in stops), None)
                tokens += len(row) if stop_at is None else stop_at + 1
    finally:
        model.generation_config = saved
    return len(rows), tokens, time.perf_counter() - start


def measure(label: str, model, tokenizer, problems, args) -> dict:
    """HFGenerator and native sampling on the same prompts; prints one line, returns its figures."""
    model.eval()
    gen = HFGenerator(
        n=args.n, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, seed=0, progress=False,
    )
    warm = HFGenerator(n=1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=2, progress=False)
    warm.generate(problems.select(range(1)), model, tokenizer)
    gen.generate(problems, model, tokenizer)
    ours = gen.last_stats
    samples, tokens, seconds = native_sampling(
        model, tokenizer, problems, args.n, args.batch_size, args.max_new_tokens, args.temperature, args.top_p
    )
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{label:<24} {params:>8.1f}M {str(model.dtype).replace('torch.', ''):>9} "
        f"{ours['samples']:>4} x {args.max_new_tokens:>3} tok  "
        f"HFGenerator {ours['samples_per_s']:>7.2f} samples/s {ours['tokens_per_s']:>8.1f} tok/s   "
        f"native {samples / seconds:>7.2f} samples/s {tokens / seconds:>8.1f} tok/s   "
        f"ratio {ours['tokens_per_s'] / (tokens / seconds):.2f}"
    )
    return {
        "label": label,
        "params_m": params,
        "dtype": str(model.dtype).replace("torch.", ""),
        "samples": ours["samples"],
        "max_new_tokens": args.max_new_tokens,
        "hf_generator_tokens_per_s": ours["tokens_per_s"],
        "hf_generator_samples_per_s": ours["samples_per_s"],
        "native_tokens_per_s": tokens / seconds,
        "native_samples_per_s": samples / seconds,
        "ratio_hf_generator_over_native": ours["tokens_per_s"] / (tokens / seconds),
    }


def measure_vllm(label: str, folder: str, problems, args) -> dict:
    """HFGenerator and VLLMGenerator on the same prompts, model and n; prints one line."""
    from reasonft.generation.vllm import VLLMGenerator, shutdown_engine

    tokenizer = load_tokenizer(folder)
    model = load_student(folder, dtype=args.dtype).eval()
    sampling = {"n": args.n, "temperature": args.temperature, "top_p": args.top_p,
                "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": 0,
                "progress": False}
    hf = HFGenerator(**sampling)
    hf.generate(problems.select(range(1)), model, tokenizer, n=1)  # warm-up
    hf.generate(problems, model, tokenizer)
    ours = VLLMGenerator(**sampling, dtype=args.dtype, enforce_eager=True, max_model_len=args.max_model_len,
                         kv_cache_memory_gib=1)
    started = time.perf_counter()
    ours.generate(problems.select(range(1)), folder, tokenizer, n=1)  # engine start and warm-up
    start_seconds = time.perf_counter() - started
    ours.generate(problems, folder, tokenizer)
    shutdown_engine()
    a, b = hf.last_stats, ours.last_stats
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{label:<34} {params:>7.1f}M {args.dtype:>8} {b['samples']:>4} x <={args.max_new_tokens} tok  "
        f"hf {a['tokens_per_s']:>7.1f} tok/s ({a['tokens']} tok)   vllm {b['tokens_per_s']:>7.1f} tok/s "
        f"({b['tokens']} tok)   ratio vllm/hf {b['tokens_per_s'] / a['tokens_per_s']:.2f}   "
        f"engine start {start_seconds:.0f} s",
        flush=True,
    )
    return {"label": label, "hf_tokens_per_s": a["tokens_per_s"], "vllm_tokens_per_s": b["tokens_per_s"],
            "ratio_vllm_over_hf": b["tokens_per_s"] / a["tokens_per_s"], "engine_start_s": start_seconds}


def main_vllm(args, world, tokenizer) -> None:
    print(f"torch threads {torch.get_num_threads()}, {args.prompts} prompts x n={args.n}, "
          f"temperature={args.temperature}, top_p={args.top_p}, max_new_tokens={args.max_new_tokens}")
    problems = world.problems("test").select(range(args.prompts))
    with tempfile.TemporaryDirectory() as tmp:
        config = {**ToyStudentBuilder(world).model_config(tokenizer), "num_attention_heads": 4,
                  "num_key_value_heads": 2}
        random_student(config, dtype=args.dtype, seed=0).save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        measure_vllm("toy shape, heads of 32 (random)", tmp, problems, args)
    for path in args.model_path:
        measure_vllm(Path(path).name[:34], path, problems, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["toy", "qwen1.5b"], default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="of the 1.5B model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--vllm", action="store_true", help="the vLLM backend beside the transformers one")
    parser.add_argument("--model-path", nargs="*", default=[], help="checkpoint folders (with --vllm)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="vLLM's context (with --vllm; null: the model's max_position_embeddings)")
    args = parser.parse_args()
    if args.vllm and args.threads is None:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)

    world = ToyWorld(seed=0, n_train=300, n_test=max(args.prompts, 8))
    tokenizer = train_tokenizer(world.corpus(), vocab_size=600)
    if args.vllm:
        main_vllm(args, world, tokenizer)
        return
    problems = world.problems("test").select(range(args.prompts))
    print(f"torch threads {torch.get_num_threads()}, {args.prompts} prompts x n={args.n}, "
          f"batch_size={args.batch_size}, temperature={args.temperature}, top_p={args.top_p}")
    if args.only in (None, "toy"):
        toy_cfg = ToyStudentBuilder(world).model_config(tokenizer)
        measure("toy student (random)", random_student(toy_cfg, seed=0), tokenizer, problems, args)
    if args.only in (None, "qwen1.5b"):
        config = REFERENCE / "qwen2.5-math-1.5b.config.json"
        if not config.is_file():
            print(f"skipped the 1.5B shape: {config} is absent")
            return
        model = random_student(str(config), dtype=args.dtype, seed=0)
        measure("Qwen2.5-Math-1.5B shape", model, tokenizer, problems, args)


if __name__ == "__main__":
    main()
