"""How closely the vLLM backend (VLLMGenerator, vLLM's CPU build) and the transformers backend
(HFGenerator) agree on the same prompts and model: greedy answers (equal records expected), and at
the official temperature 0.6 / top_p 0.95 the distributions (their random streams differ, so the
tokens do too): mean response length, Pass@1 and Pass@k per backend, with the paired difference
over prompts in standard errors.

Models: a small toy student (the toy recipe at hidden 64 with heads of 32, which vLLM's CPU
attention takes, built into the cache like tests/generation/test_vllm_backend.py's) and any
checkpoint folder given with --model-path (e.g. SmolLM2-135M-Instruct). Runs in .venv-vllm
(`make test-vllm` builds it).

    .venv-vllm/bin/python bench/vllm_agreement.py --prompts 40 --n 8
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from pathlib import Path

from reasonft.config import PROJECT_ROOT
from reasonft.data.toy import ToyWorld
from reasonft.evaluation.passk import pass_at_k
from reasonft.generation.hf import HFGenerator
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.models.toy import ToyStudentBuilder
from reasonft.verify.extract import extract_answer

# The student of tests/generation/test_vllm_backend.py (the same folder in the cache).
SMALL_TOY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
             "intermediate_size": 128, "vocab_size": 600, "steps": 400, "batch_size": 32,
             "n_pretrain": 2000, "seed": 0, "num_threads": 1}


def per_prompt(records, n: int, k: int) -> dict[str, list[float]]:
    """Per prompt: mean response length, Pass@1 and Pass@k of its n samples."""
    out: dict[str, list[float]] = {"length": [], "pass@1": [], f"pass@{k}": []}
    for start in range(0, len(records), n):
        rows = records.select(range(start, start + n))
        correct = sum(extract_answer(r["response"]) == r["answer"] for r in rows)
        out["length"].append(statistics.fmean(rows["gen_tokens"]))
        out["pass@1"].append(pass_at_k(n, correct, 1))
        out[f"pass@{k}"].append(pass_at_k(n, correct, k))
    return out


def compare(label: str, folder: str, problems, args) -> None:
    from reasonft.generation.vllm import VLLMGenerator, shutdown_engine

    tokenizer = load_tokenizer(folder)
    model = load_student(folder, dtype="float32").eval()
    engine = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_gib": 1,
              "max_model_len": args.max_model_len, "batch_size": 128, "progress": False}
    greedy = {"n": 1, "temperature": 0.0, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    hf_greedy = HFGenerator(**greedy, batch_size=128, progress=False).generate(problems, model, tokenizer)
    vllm_greedy = VLLMGenerator(**greedy, **engine).generate(problems, folder, tokenizer)
    same = sum(a == b for a, b in zip(hf_greedy.to_list(), vllm_greedy.to_list()))
    print(f"\n{label}: greedy records equal {same}/{len(problems)} "
          f"(responses equal {sum(a == b for a, b in zip(hf_greedy['response'], vllm_greedy['response']))})")

    sampled = {"n": args.n, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": args.max_new_tokens,
               "seed": args.seed}
    hf = per_prompt(HFGenerator(**sampled, batch_size=128, progress=False).generate(problems, model, tokenizer),
                    args.n, args.k)
    ours = per_prompt(VLLMGenerator(**sampled, **engine).generate(problems, folder, tokenizer), args.n, args.k)
    shutdown_engine()
    print(f"  T=0.6, top_p 0.95, {len(problems)} prompts x n={args.n}: mean ± standard error over prompts")
    print(f"  {'':<10} {'hf':>16} {'vllm':>16} {'vllm - hf':>16} {'z':>6}")
    for name in hf:
        a, b = hf[name], ours[name]
        diffs = [y - x for x, y in zip(a, b)]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        mean = statistics.fmean(diffs)
        z = mean / se if se > 0 else 0.0
        print(f"  {name:<10} {_pm(a):>16} {_pm(b):>16} {mean:>+9.3f} ± {se:<5.3f} {z:>+6.2f}")


def _pm(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM's context (null: the model's)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--model-path", nargs="*", default=[], help="checkpoint folders besides the toy student")
    parser.add_argument("--no-toy", action="store_true", help="only the --model-path folders")
    args = parser.parse_args()

    world = ToyWorld(seed=0, n_train=200, n_test=max(args.prompts, 40))
    problems = world.problems("test").select(range(args.prompts))
    if not args.no_toy:
        cache = Path(os.environ.get("REASONFT_CACHE", PROJECT_ROOT / ".cache" / "reasonft"))
        folder = ToyStudentBuilder(ToyWorld(seed=0, n_train=200, n_test=40), **SMALL_TOY).build(cache)
        compare("small toy student (hidden 64, heads of 32)", folder, problems, args)
    for path in args.model_path:
        compare(Path(path).name, path, problems, args)


if __name__ == "__main__":
    main()
