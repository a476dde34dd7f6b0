"""Generation until the context limit (`max_new_tokens: null`), explicit `max_total_tokens`, and
stop tokens given by id — against a plain one-sequence-at-a-time argmax loop."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import ClassVar

import pytest
import torch

from reasonft.data.prompts import PromptFormat
from reasonft.generation.hf import HFGenerator, gumbel_noise
from reasonft.generation.inputs import sample_seed

PROBLEMS = [
    {"prompt_id": "a", "prompt": "Compute 3 + 4.", "answer": "7"},
    {"prompt_id": "b", "prompt": "Compute (12 - 5) * 3. Let's reason step by step.", "answer": "21"},
    {"prompt_id": "c", "prompt": "Step 1: 8 / 2", "answer": "4"},
]


def _prompt_ids(tokenizer, problem: str) -> list[int]:
    text = "<|im_start|>user\n" + problem + "<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _reference(
    model, tokenizer, problem: str, limit: int, stops: set[int], key: int | None = None
) -> tuple[list[int], str]:
    """One sequence, full forwards: tokens until a stop or prompt + response = limit; greedy, or
    (with a sample key) temperature-1 sampling by the same Gumbel noise the generator uses."""
    seq = _prompt_ids(tokenizer, problem)
    new: list[int] = []
    while len(seq) < limit:
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1].float()
        if key is not None:
            logits = logits + gumbel_noise(torch.tensor([key]), len(new), logits.shape[-1])[0]
        token = int(logits.argmax())
        if token in stops:
            return new, "stop"
        new.append(token)
        seq.append(token)
    return new, "length"


def _stops(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}


@pytest.mark.parametrize("explicit_limit", [True, False])
def test_null_budget_runs_each_row_to_its_own_context_limit(tiny_model, tiny_tokenizer, explicit_limit):
    lengths = [len(_prompt_ids(tiny_tokenizer, p["prompt"])) for p in PROBLEMS]
    limit = max(lengths) + 5  # the rows' prompts differ in length, so their budgets differ
    saved = tiny_model.config.max_position_embeddings
    if not explicit_limit:
        tiny_model.config.max_position_embeddings = limit
    try:
        gen = HFGenerator(
            n=4, temperature=1.0, top_p=1.0, max_new_tokens=None, batch_size=12, seed=11,
            progress=False, max_total_tokens=limit if explicit_limit else None,
        )
        out = gen.generate(PROBLEMS, tiny_model, tiny_tokenizer, PromptFormat())
    finally:
        tiny_model.config.max_position_embeddings = saved
    by_prompt = {p["prompt_id"]: n for p, n in zip(PROBLEMS, lengths)}
    for record in out:
        key = sample_seed(11, record["prompt_id"], record["sample_idx"])
        ids, reason = _reference(
            tiny_model, tiny_tokenizer, record["prompt"], limit, _stops(tiny_tokenizer), key
        )
        assert record["response"] == tiny_tokenizer.decode(ids, skip_special_tokens=True)
        assert (record["gen_tokens"], record["finish_reason"]) == (len(ids), reason)
        assert by_prompt[record["prompt_id"]] + record["gen_tokens"] <= limit
    # Rows cut by the limit stop at their own budget (prompt lengths differ), not the batch's.
    cut = {(r["prompt_id"], r["gen_tokens"]) for r in out if r["finish_reason"] == "length"}
    assert len({n for _, n in cut}) > 1


def test_max_new_tokens_and_context_limit_both_apply(tiny_model, tiny_tokenizer):
    lengths = [len(_prompt_ids(tiny_tokenizer, p["prompt"])) for p in PROBLEMS]
    limit = max(lengths) + 3
    gen = HFGenerator(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, max_total_tokens=limit,
                      batch_size=9, seed=5, progress=False)
    out = gen.generate(PROBLEMS, tiny_model, tiny_tokenizer)
    by_prompt = {p["prompt_id"]: n for p, n in zip(PROBLEMS, lengths)}
    for record in out:
        budget = min(6, limit - by_prompt[record["prompt_id"]])
        key = sample_seed(5, record["prompt_id"], record["sample_idx"])
        ids, reason = _reference(
            tiny_model, tiny_tokenizer, record["prompt"], by_prompt[record["prompt_id"]] + budget,
            _stops(tiny_tokenizer), key,
        )
        assert (record["gen_tokens"], record["finish_reason"]) == (len(ids), reason)
    cut = [(r["gen_tokens"], limit - by_prompt[r["prompt_id"]]) for r in out if r["finish_reason"] == "length"]
    assert any(n == 6 < room for n, room in cut)  # cut by max_new_tokens
    assert any(n == room < 6 for n, room in cut)  # cut by the context limit


def test_stop_token_ids_end_a_response(tiny_model, tiny_tokenizer):
    problem = PROBLEMS[1]
    limit = len(_prompt_ids(tiny_tokenizer, problem["prompt"])) + 8
    for seed in range(100):  # a sample that runs past 4 tokens without stopping
        key = sample_seed(seed, problem["prompt_id"], 0)
        plain, _ = _reference(tiny_model, tiny_tokenizer, problem["prompt"], limit, _stops(tiny_tokenizer), key)
        if len(plain) > 4 and plain[3] not in plain[:3]:
            break
    stop = plain[3]
    gen = HFGenerator(n=1, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=seed,
                      stop_token_ids=[stop], progress=False)
    out = gen.generate([problem], tiny_model, tiny_tokenizer)
    assert out["response"][0] == tiny_tokenizer.decode(plain[:3], skip_special_tokens=True)
    assert (out["gen_tokens"][0], out["finish_reason"][0]) == (3, "stop")


def test_budget_errors_name_the_keys(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="generate.max_new_tokens"):
        HFGenerator(max_new_tokens=0)
    with pytest.raises(ValueError, match="generate.max_total_tokens"):
        HFGenerator(max_total_tokens=1)
    too_short = HFGenerator(n=1, temperature=0.0, max_new_tokens=None, max_total_tokens=5, progress=False)
    with pytest.raises(ValueError, match="generate.max_total_tokens"):
        too_short.generate(PROBLEMS[:1], tiny_model, tiny_tokenizer)
    bad_id = HFGenerator(n=1, temperature=0.0, stop_token_ids=[151645], progress=False)
    with pytest.raises(ValueError, match="generate.stop_token_ids"):
        bad_id.generate(PROBLEMS[:1], tiny_model, tiny_tokenizer)


class _FakeLLM:
    """Records what the backend asks vLLM for; answers with one fixed token per request."""

    instances: ClassVar[list[_FakeLLM]] = []

    def __init__(self, model: str, seed: int, **engine_args) -> None:
        self.engine_args = engine_args
        self.requests: list = []
        self.params: list = []
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=engine_args.get("max_model_len") or 512)
        )
        _FakeLLM.instances.append(self)

    def generate(self, requests, sampling_params, use_tqdm):
        self.requests, self.params = requests, sampling_params
        done = types.SimpleNamespace(token_ids=[5], finish_reason="length")
        return [types.SimpleNamespace(outputs=[done]) for _ in requests]


def test_vllm_budget_is_the_context_limit_minus_each_prompt(monkeypatch, tiny_model, tiny_tokenizer, tmp_path):
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM = _FakeLLM
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    # The fake stands for vLLM on a GPU (the CPU build's checks are tested beside the real one).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from reasonft.generation.vllm import VLLMGenerator, shutdown_engine

    tiny_model.save_pretrained(tmp_path / "ckpt")
    stop = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen = VLLMGenerator(n=2, temperature=0.6, top_p=0.95, max_new_tokens=None, max_total_tokens=300,
                        stop_token_ids=[stop], extra_stop_tokens=[], progress=False)
    assert gen.engine_args["max_model_len"] == 300  # the engine holds full-length samples
    gen.generate(PROBLEMS, str(tmp_path / "ckpt"), tiny_tokenizer)
    llm = _FakeLLM.instances[-1]
    lengths = [len(_prompt_ids(tiny_tokenizer, p["prompt"])) for p in PROBLEMS for _ in range(2)]
    assert [p["max_tokens"] for p in llm.params] == [300 - n for n in lengths]
    assert all(stop in p["stop_token_ids"] for p in llm.params)
    with pytest.raises(ValueError, match="generate.max_model_len"):
        VLLMGenerator(max_model_len=100, max_total_tokens=300)
    shutdown_engine()  # the fake engine is the process's engine: let it go


def test_vllm_gpu_settings_stop_at_startup_without_cuda(monkeypatch, tiny_model, tiny_tokenizer, tmp_path):
    """vLLM's CPU build: the KV cache needs a size (gpu_memory_utilization would be a share of
    RAM) and the model a head size its attention takes; both stop before an engine starts."""
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM = _FakeLLM
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    from reasonft.generation.vllm import VLLMGenerator, head_size

    with pytest.raises(ValueError, match="generate.kv_cache_memory_gib=null without CUDA"):
        VLLMGenerator(n=2, temperature=0.6, top_p=0.95)
    with pytest.raises(ValueError, match="generate.kv_cache_memory_gib=0"):
        VLLMGenerator(kv_cache_memory_gib=0)
    gen = VLLMGenerator(n=1, temperature=0.0, kv_cache_memory_gib=0.5, progress=False)
    assert gen.engine_args["kv_cache_memory_bytes"] == 2**29
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert VLLMGenerator(n=1, temperature=0.0).engine_args["kv_cache_memory_bytes"] is None

    tiny_model.save_pretrained(tmp_path / "ckpt")  # hidden 32 / 4 heads: heads of size 8
    assert head_size(tmp_path / "ckpt") == 8
    started = len(_FakeLLM.instances)
    with pytest.raises(ValueError, match="attention heads of size 8"):
        gen.generate(PROBLEMS, str(tmp_path / "ckpt"), tiny_tokenizer)
    assert len(_FakeLLM.instances) == started  # stopped before any engine
