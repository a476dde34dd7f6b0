"""Generation backends: seeded, batch-independent sampling; records; stop tokens; vLLM guards."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch

from reasonft.data.prompts import build_prompt
from reasonft.generation.hf import HFGenerator, SeededSampler, gumbel_noise
from reasonft.generation.inputs import sample_seed, stop_token_ids
from reasonft.generation.outputs import cut_at_stop

PROBLEMS = [
    {"prompt_id": "a", "prompt": "Compute 3 + 4.", "answer": "7"},
    {"prompt_id": "b", "prompt": "Compute (12 - 5) * 3. Let's reason step by step.", "answer": "21"},
    {"prompt_id": "c", "prompt": "Step 1: 8 / 2", "answer": "4"},
    {"prompt_id": "d", "prompt": "First, we subtract five from twelve, which gives seven.", "answer": "7"},
]


def _gen(**kw) -> HFGenerator:
    settings = {"n": 2, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 6, "batch_size": 3,
                "seed": 7, "progress": False}
    settings.update(kw)
    return HFGenerator(**settings)


def _by_key(ds) -> dict[tuple[str, int], str]:
    return {(r["prompt_id"], r["sample_idx"]): r["response"] for r in ds}


def test_records_n_samples_ids_and_order(tiny_model, tiny_tokenizer):
    out = _gen(n=3, batch_size=12).generate(PROBLEMS, tiny_model, tiny_tokenizer)
    assert len(out) == 3 * len(PROBLEMS)
    assert out["prompt_id"][:] == [p["prompt_id"] for p in PROBLEMS for _ in range(3)]
    assert out["sample_idx"][:] == [0, 1, 2] * len(PROBLEMS)
    assert out["prompt"][:] == [p["prompt"] for p in PROBLEMS for _ in range(3)]
    assert out["answer"][:] == [p["answer"] for p in PROBLEMS for _ in range(3)]
    assert set(out["source"]) == {"self"}
    for r in out:
        assert 0 <= r["gen_tokens"] <= 6
        assert r["finish_reason"] == ("length" if r["gen_tokens"] == 6 else "stop")
    # The n samples of a prompt are different draws.
    assert len({r["response"] for r in out if r["prompt_id"] == "b"}) > 1


def test_same_seed_same_samples_different_seed_differs(tiny_model, tiny_tokenizer):
    first = _gen(batch_size=4).generate(PROBLEMS[:2], tiny_model, tiny_tokenizer)
    again = _gen(batch_size=4).generate(PROBLEMS[:2], tiny_model, tiny_tokenizer)
    other = _gen(batch_size=4, seed=8).generate(PROBLEMS[:2], tiny_model, tiny_tokenizer)
    assert first["response"][:] == again["response"][:]
    assert first["response"][:] != other["response"][:]


def test_samples_do_not_depend_on_batching_or_order(tiny_model, tiny_tokenizer):
    problems = PROBLEMS[1:4]  # prompts of different lengths: different left padding
    reference = _by_key(_gen(batch_size=1).generate(problems, tiny_model, tiny_tokenizer))
    batched = _by_key(_gen(batch_size=4).generate(problems, tiny_model, tiny_tokenizer))
    reordered = _by_key(_gen(batch_size=6).generate(problems[::-1], tiny_model, tiny_tokenizer))
    subset = _by_key(_gen(batch_size=2).generate(problems[1:2], tiny_model, tiny_tokenizer))
    assert batched == reference
    assert reordered == reference
    assert all(subset[k] == reference[k] for k in subset)


def _reference_step_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Plain nucleus filter (kept: the smallest top set whose mass reaches top_p), written anew."""
    scores = logits.double() / temperature
    probs = torch.softmax(scores, -1)
    order = torch.argsort(probs, descending=True)
    kept, mass = [], 0.0
    for idx in order.tolist():
        kept.append(idx)
        mass += probs[idx].item()
        if mass >= top_p:
            break
    out = torch.full_like(scores, -math.inf)
    out[kept] = scores[kept]
    return out


def test_sampling_equals_a_naive_loop(tiny_model, tiny_tokenizer):
    """Batched, left-padded, KV-cached sampling = per prompt full forwards + the same noise."""
    gen = _gen(n=2, max_new_tokens=6, batch_size=8, temperature=0.8, top_p=0.9)
    problems = PROBLEMS[1:3]
    out = _by_key(gen.generate(problems, tiny_model, tiny_tokenizer))
    eos = tiny_tokenizer.eos_token_id
    stops = set(stop_token_ids(tiny_tokenizer, None, ["<|im_end|>"]))
    for p in problems:
        ids = tiny_tokenizer(build_prompt(p["prompt"], tiny_tokenizer), add_special_tokens=False)["input_ids"]
        for s in range(2):
            key = torch.tensor([sample_seed(7, p["prompt_id"], s)])
            seq, new = list(ids), []
            for step in range(6):
                with torch.no_grad():
                    logits = tiny_model(torch.tensor([seq])).logits[0, -1].float()
                scores = _reference_step_scores(logits, 0.8, 0.9)
                token = int(torch.argmax(scores.float() + gumbel_noise(key, step, logits.shape[-1])[0]))
                if token in stops:
                    break
                new.append(token)
                seq.append(token)
            assert out[(p["prompt_id"], s)] == tiny_tokenizer.decode(new, skip_special_tokens=True)
    assert eos in stops


def test_greedy_equals_naive_argmax_loop(tiny_model, tiny_tokenizer):
    gen = _gen(n=1, temperature=0.0, top_p=1.0, max_new_tokens=5, batch_size=4)
    out = gen.generate(PROBLEMS, tiny_model, tiny_tokenizer)
    for r in out:
        seq = tiny_tokenizer(build_prompt(r["prompt"], tiny_tokenizer), add_special_tokens=False)["input_ids"]
        new = []
        for _ in range(5):
            with torch.no_grad():
                token = int(tiny_model(torch.tensor([seq])).logits[0, -1].argmax())
            if token in (tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")):
                break
            new.append(token)
            seq.append(token)
        assert r["response"] == tiny_tokenizer.decode(new, skip_special_tokens=True)


def test_temperature_per_call_and_answer_alternatives_carried(tiny_model, tiny_tokenizer):
    greedy = _gen(n=1, temperature=0.0, top_p=1.0).generate(PROBLEMS, tiny_model, tiny_tokenizer)
    overridden = _gen(n=1).generate(PROBLEMS, tiny_model, tiny_tokenizer, temperature=0)
    assert overridden["response"] == greedy["response"]
    with pytest.raises(ValueError, match="greedy"):
        _gen(n=2).generate(PROBLEMS, tiny_model, tiny_tokenizer, temperature=0)
    problems = [{**p, "answer_alternatives": [f"alt-{i}"]} for i, p in enumerate(PROBLEMS)]
    out = _gen(n=2).generate(problems, tiny_model, tiny_tokenizer)
    assert out["answer_alternatives"] == [[f"alt-{i}"] for i in range(len(PROBLEMS)) for _ in range(2)]


def test_sampler_draws_from_the_tempered_nucleus():
    """Empirical token frequencies over many sample keys match softmax(l/T) on the top-p set."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    temperature, top_p, draws = 0.7, 0.9, 100_000
    sampler = SeededSampler(torch.arange(draws, dtype=torch.int64), 0, temperature, top_p)
    picked = sampler(torch.zeros(draws, 3, dtype=torch.long), logits.expand(draws, -1).clone()).argmax(-1)
    empirical = torch.bincount(picked, minlength=6).double() / draws
    expected = torch.softmax(_reference_step_scores(logits, temperature, top_p), -1)
    # 5 standard errors of a binomial share.
    tolerance = 5 * torch.sqrt(expected * (1 - expected) / draws) + 1e-12
    assert torch.all((empirical - expected).abs() <= tolerance), (empirical, expected)
    # Step and key change the noise; the same (key, step) gives the same noise.
    a, b = gumbel_noise(torch.tensor([1, 2]), 0, 50), gumbel_noise(torch.tensor([1, 2]), 1, 50)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, b)
    assert torch.equal(a, gumbel_noise(torch.tensor([1, 2]), 0, 50))


def _biased_copy(model, token_id: int):
    """A copy of `model` whose output layer always prefers `token_id`."""
    biased = copy.deepcopy(model)
    head = torch.nn.Linear(biased.config.hidden_size, biased.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[token_id] = 10.0
    biased.lm_head = head
    return biased


def test_stops_at_eos_and_extra_stop_tokens(tiny_model, tiny_tokenizer):
    for stop in (tiny_tokenizer.eos_token, "<|im_end|>"):
        model = _biased_copy(tiny_model, tiny_tokenizer.convert_tokens_to_ids(stop))
        out = _gen(n=1, temperature=0.0, top_p=1.0, max_new_tokens=5).generate(PROBLEMS[:2], model, tiny_tokenizer)
        assert out["response"][:] == ["", ""]
        assert out["finish_reason"][:] == ["stop", "stop"]
        assert out["gen_tokens"][:] == [0, 0]
    assert cut_at_stop([5, 6, 0, 7, 0], {0}) == ([5, 6], True)
    assert cut_at_stop([5, 6], {0}) == ([5, 6], False)


def test_think_tokens_survive_decoding_special_tokens_do_not(tiny_model, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens(["<think>", "</think>"])  # added, not special: as in R1-style tokenizers
    model = copy.deepcopy(tiny_model)
    model.resize_token_embeddings(len(tok))
    think = _biased_copy(model, tok.convert_tokens_to_ids("<think>"))
    out = _gen(n=1, temperature=0.0, top_p=1.0, max_new_tokens=3).generate(PROBLEMS[:1], think, tok)
    assert out["response"][0] == "<think><think><think>"
    special = _biased_copy(model, tok.convert_tokens_to_ids("<|im_start|>"))
    out = _gen(n=1, temperature=0.0, top_p=1.0, max_new_tokens=3).generate(PROBLEMS[:1], special, tok)
    assert out["response"][0] == "" and out["gen_tokens"][0] == 3


def test_generation_config_of_the_checkpoint_is_ignored_and_mode_restored(tiny_model, tiny_tokenizer):
    model = copy.deepcopy(tiny_model)
    plain = _gen(batch_size=4).generate(PROBLEMS[:2], model, tiny_tokenizer)
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.top_k = 2
    model.train()
    again = _gen(batch_size=4).generate(PROBLEMS[:2], model, tiny_tokenizer)
    assert plain["response"][:] == again["response"][:]
    assert model.training and model.generation_config.repetition_penalty == 3.0


def test_bad_settings_and_inputs_raise(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="greedy"):
        HFGenerator(n=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        HFGenerator(top_p=0.0)
    with pytest.raises(ValueError, match="unique"):
        _gen().generate(PROBLEMS + PROBLEMS[:1], tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match="prompt_id"):
        _gen().generate([{"prompt": "x", "answer": "1"}], tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match="greedy"):
        _gen(temperature=0.0, n=1).generate(PROBLEMS, tiny_model, tiny_tokenizer, n=2)


# -- vLLM backend ------------------------------------------------------------------------------


def test_vllm_missing_extra_message_is_clear(monkeypatch):
    from reasonft.generation import vllm as backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # behaves as "not installed"
    with pytest.raises(ImportError, match=r"pip install -e \.\[vllm\]"):
        backend.VLLMGenerator(n=2, temperature=0.6, top_p=0.95)
    with pytest.raises(ImportError, match=r"pip install -e \.\[vllm\]"):
        backend.import_vllm()


def test_vllm_checkpoint_guards(tiny_model, tmp_path):
    from reasonft.generation.vllm import check_weights_on_disk, checkpoint_path

    model = copy.deepcopy(tiny_model)
    model.save_pretrained(tmp_path / "ckpt")
    assert checkpoint_path(str(tmp_path / "ckpt")) == tmp_path / "ckpt"
    with pytest.raises(ValueError, match="checkpoint folder"):
        checkpoint_path(tmp_path / "nothing")
    with pytest.raises(ValueError, match="checkpoint folder"):
        checkpoint_path(model)  # built from a config: name_or_path is no folder
    check_weights_on_disk(model, tmp_path / "ckpt")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="differs from its checkpoint"):
        check_weights_on_disk(model, tmp_path / "ckpt")


@pytest.mark.gpu
def test_vllm_generates_reproducible_records(tiny_model, tiny_tokenizer, tmp_path):
    pytest.importorskip("vllm", reason="the vllm extra is not installed")
    from reasonft.generation.vllm import VLLMGenerator
    from reasonft.models.tokenizer import save_tokenizer

    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    save_tokenizer(tiny_tokenizer, folder)
    gen = VLLMGenerator(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3,
                        gpu_memory_utilization=0.3, enforce_eager=True, progress=False)
    first = gen.generate(PROBLEMS, str(folder), tiny_tokenizer)
    again = gen.generate(PROBLEMS[::-1], str(folder), tiny_tokenizer)
    assert len(first) == 3 * len(PROBLEMS)
    assert first["sample_idx"][:] == [0, 1, 2] * len(PROBLEMS)
    assert _by_key(first) == _by_key(again)
    assert all(0 <= n <= 8 for n in first["gen_tokens"])
