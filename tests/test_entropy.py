"""Policy entropy against a plain full-softmax reference (METHODS §3)."""

from __future__ import annotations

import math

import pytest
import torch

from reasonft.data.prompts import OXA_SUFFIX, PromptFormat, build_prompt
from reasonft.evaluation.entropy import policy_entropy, response_entropies

RECORDS = [
    {"prompt": "Compute 3 + 4.", "response": "<think>\n3 + 4 = 7\n</think>\n\\boxed{7}"},
    {"prompt": "Compute (12 - 5) * 3.", "response": "First, we subtract five from twelve, which gives seven.\n\nNext, multiply by three: 21."},
    {"prompt": "Step 1: 8 / 2", "response": "4"},
    {"prompt": "Step 2", "response": "Step 2: 4 + 9 = 13\n\\boxed{13}"},
]


def _reference(model, tokenizer, records, suffix="", chat_template=True, terminator=""):
    """Per record, one unpadded forward with full logits: list of per-token entropies."""
    out = []
    for r in records:
        text = r["prompt"] + suffix
        if chat_template:
            text = "<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n"
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        response = tokenizer(r["response"] + terminator, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        entropies = []
        for t in range(len(prompt), len(prompt) + len(response)):
            p = torch.softmax(logits[t - 1], -1)  # predicts token t
            entropies.append(float(-(p * torch.log(p)).sum()))
        out.append(entropies)
    return out


def test_policy_entropy_matches_full_softmax(tiny_model, tiny_tokenizer):
    ref = _reference(tiny_model, tiny_tokenizer, RECORDS)
    # A small token budget forces several padded batches.
    got = policy_entropy(tiny_model, tiny_tokenizer, RECORDS, batch_tokens=64, chunk_tokens=7, progress=False)
    tokens = sum(len(e) for e in ref)
    assert got["tokens"] == tokens and got["responses"] == len(RECORDS)
    assert math.isclose(got["entropy"], sum(map(sum, ref)) / tokens, rel_tol=0, abs_tol=1e-5)
    per_response = sum(sum(e) / len(e) for e in ref) / len(ref)
    assert math.isclose(got["entropy_per_response"], per_response, rel_tol=0, abs_tol=1e-5)
    per_record, _ = response_entropies(tiny_model, tiny_tokenizer, RECORDS, progress=False)
    for (total, n), e in zip(per_record, ref):
        assert n == len(e) and math.isclose(total, sum(e), abs_tol=1e-4)


@pytest.mark.parametrize(
    ("chat_template", "terminator"), [(False, "<|endoftext|>"), (True, "<|im_end|>\n")]
)
def test_prompt_format_and_terminator_are_taken_into_account(
    tiny_model, tiny_tokenizer, chat_template, terminator
):
    ref = _reference(
        tiny_model, tiny_tokenizer, RECORDS, suffix=OXA_SUFFIX, chat_template=chat_template,
        terminator=terminator,
    )
    got = policy_entropy(
        tiny_model, tiny_tokenizer, RECORDS,
        prompt_format=PromptFormat(suffix=OXA_SUFFIX, chat_template=chat_template),
        terminate=True, progress=False,
    )
    assert got["tokens"] == sum(len(e) for e in ref)
    assert math.isclose(got["entropy"], sum(map(sum, ref)) / got["tokens"], abs_tol=1e-5)


def test_skipped_records_are_counted_and_mode_restored(tiny_model, tiny_tokenizer):
    records = RECORDS + [{"prompt": "Compute 1 + 1.", "response": ""}]
    tiny_model.train()
    try:
        got = policy_entropy(tiny_model, tiny_tokenizer, records, max_length=30, progress=False)
        assert tiny_model.training
    finally:
        tiny_model.eval()
    lengths = [
        len(tiny_tokenizer(build_prompt(r["prompt"], tiny_tokenizer) , add_special_tokens=False)["input_ids"])
        + len(tiny_tokenizer(r["response"], add_special_tokens=False)["input_ids"])
        for r in RECORDS
    ]
    too_long = sum(n > 30 for n in lengths)
    assert 0 < too_long < len(RECORDS)
    assert got["skipped_empty"] == 1
    assert got["skipped_too_long"] == too_long
    assert got["responses"] == len(RECORDS) - too_long
    kept = [r for r, n in zip(RECORDS, lengths) if n <= 30]
    ref = _reference(tiny_model, tiny_tokenizer, kept)
    assert math.isclose(got["entropy"], sum(map(sum, ref)) / sum(map(len, ref)), abs_tol=1e-5)
    nothing = policy_entropy(tiny_model, tiny_tokenizer, records[-1:], progress=False)
    assert math.isnan(nothing["entropy"]) and nothing["tokens"] == 0
