"""score.ppl_numerics=official_bf16: the official PPL script's bfloat16 numerics (per-token loss,
its sum and its mean each rounded to bfloat16), against a numpy reference of that rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reasonft.scoring.scorer import Scorer

RESPONSES = [
    "<think>\n3 + 4 = 7\n\nThen 7 * 2 = 14\n\nSo the answer is 14.\n</think>\n\\boxed{14}",
    "First, we subtract five from twelve, which gives seven.\n\nNext, multiply by three: 21.",
    "Step 1: 8 / 2 = 4\nStep 2: 4 + 9 = 13\n\\boxed{13}",
    "7",
]


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32: the top 16 bits kept."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def reference_ppl(model, tokenizer, response: str) -> tuple[float | None, float | None]:
    """(official-numerics PPL, float64 PPL) of the response text alone: tokens 1.. scored."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        return None, None
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    loss = to_bf16(-logp.numpy())
    total = to_bf16(np.float32(loss.astype(np.float32).sum(dtype=np.float32)))
    mean = to_bf16(np.float32(total / np.float32(len(loss))))
    return math.exp(float(mean[()] if mean.shape else mean)), math.exp(float(-logp.double().mean()))


def test_official_bf16_numerics_reproduce_the_rounding(tiny_model, tiny_tokenizer):
    records = [{"prompt": "p", "response": r} for r in RESPONSES]
    common = {"method": "ppl", "condition_on_prompt": False, "progress": False, "max_length": 512}
    official, report = Scorer(**common, ppl_numerics="official_bf16")(records, tiny_model, tiny_tokenizer)
    plain, _ = Scorer(**common)(records, tiny_model, tiny_tokenizer)
    assert report["ppl_numerics"] == "official_bf16"
    moved = 0
    for response, got, exact in zip(RESPONSES, official["ppl"], plain["ppl"], strict=True):
        want, want_exact = reference_ppl(tiny_model, tiny_tokenizer, response)
        if want is None:  # one token: nothing scored (the official script writes NaN here)
            assert got is None and exact is None
            continue
        assert got == pytest.approx(want, rel=1e-9), response
        assert exact == pytest.approx(want_exact, rel=1e-5)
        # bfloat16 keeps 8 significant bits: the mean NLL moves by at most 2^-8 of itself (x3)
        assert abs(math.log(got) - math.log(exact)) <= 3 * 2**-8 * math.log(exact) + 1e-12
        moved += got != exact
    assert moved >= 2
