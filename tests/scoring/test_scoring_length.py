"""Over-length records in scoring: truncate (the official OXA rule), drop or error, counted;
what a scorer produces and how to widen it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reasonft.data.prompts import build_prompt
from reasonft.scoring import reference
from reasonft.scoring.api import score
from reasonft.scoring.scorer import Scorer

SHORT = {"prompt_id": "short", "prompt": "Compute 3 + 4.", "response": "3 + 4 = 7\n\n\\boxed{7}"}
# Far longer than the tiny model's 512 positions.
LONG = {
    "prompt_id": "long",
    "prompt": "Compute 3 + 4.",
    "response": "\n\n".join(f"Step {i}: {i} + 4 = {i + 4}" for i in range(1, 200)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def naive_ppl_of_first_tokens(model, tok, record, max_length, condition_on_prompt):
    """`reference.ppl` of the response tokens among the first `max_length` tokens."""
    prompt = []
    if condition_on_prompt:
        prompt = tok(build_prompt(record["prompt"], tok), add_special_tokens=False)["input_ids"]
    response = tok(record["response"], add_special_tokens=False)["input_ids"]
    kept = response[: max_length - len(prompt)]
    return reference.ppl(model, prompt, kept), len(response), len(kept)


def test_long_response_is_truncated_to_the_models_positions(tiny_model, tiny_tokenizer):
    """Before: the whole response was scored past the model's 512 positions, silently."""
    assert tiny_model.config.max_position_embeddings == 512
    out, report = Scorer(method="ppl", condition_on_prompt=False, progress=False)(
        [SHORT, LONG], tiny_model, tiny_tokenizer
    )
    ppl, n_tokens, n_scored = naive_ppl_of_first_tokens(tiny_model, tiny_tokenizer, LONG, 512, False)
    assert n_tokens > 1000
    row = out[1]
    assert row["ppl"] == pytest.approx(ppl, rel=1e-4)
    assert row["n_tokens"] == n_tokens and row["n_scored_tokens"] == n_scored == 512
    assert out[0]["n_scored_tokens"] == out[0]["n_tokens"]
    assert report["truncated"] == 1 and report["dropped"] == 0
    assert report["max_length"] == 512 and report["longest_response_tokens"] == n_tokens


@pytest.mark.parametrize("condition", [True, False], ids=["prompt", "no-prompt"])
def test_truncation_keeps_the_prompt_and_the_first_response_tokens(
    tiny_model, tiny_tokenizer, condition
):
    max_length = 64
    scorer = Scorer(
        method="all", window=1.0, condition_on_prompt=condition, max_length=max_length, progress=False
    )
    out, report = scorer([SHORT, LONG], tiny_model, tiny_tokenizer)
    ppl, n_tokens, n_scored = naive_ppl_of_first_tokens(
        tiny_model, tiny_tokenizer, LONG, max_length, condition
    )
    assert out[1]["ppl"] == pytest.approx(ppl, rel=1e-4)
    assert out[1]["galp"] == pytest.approx(-math.log(ppl), rel=1e-4)
    assert (out[1]["n_tokens"], out[1]["n_scored_tokens"]) == (n_tokens, n_scored)
    # LALP over the kept steps only; with the full-prefix window it is the mean of the step means
    assert 1 <= len(out[1]["step_logps"]) < LONG["response"].count("Step")
    assert out[1]["lalp"] == pytest.approx(np.mean(out[1]["step_logps"]))
    short_ppl, _, _ = naive_ppl_of_first_tokens(tiny_model, tiny_tokenizer, SHORT, max_length, condition)
    assert out[0]["ppl"] == pytest.approx(short_ppl, rel=1e-4)
    assert report["truncated"] == 1


def test_drop_and_error_policies(tiny_model, tiny_tokenizer):
    records = [SHORT, LONG, {**SHORT, "prompt_id": "short2"}]
    out, report = Scorer(method="ppl", overlength="drop", progress=False)(
        records, tiny_model, tiny_tokenizer
    )
    assert out["prompt_id"] == ["short", "short2"]
    assert report["dropped"] == 1 and report["truncated"] == 0 and report["unscorable"] == 0
    with pytest.raises(ValueError, match=r"row 1 .*score.max_length=512.*score.overlength"):
        Scorer(method="ppl", overlength="error", progress=False)(records, tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match="score.overlength='cut'"):
        Scorer(overlength="cut")
    with pytest.raises(ValueError, match="score.max_length=1"):
        Scorer(max_length=1)


def test_notebook_score_returns_records_and_the_scorer_returns_a_report(tiny_model, tiny_tokenizer):
    records = score(
        [SHORT, LONG], tiny_model, tiny_tokenizer, method="ppl", condition_on_prompt=False,
        progress=False,
    )
    assert isinstance(records, list) and records[1]["n_scored_tokens"] == 512
    _, report = score(
        [SHORT, LONG], tiny_model, tiny_tokenizer, method="ppl", progress=False, return_report=True
    )
    assert report["truncated"] == 1


def test_produces_and_with_columns():
    assert Scorer(method="ppl").produces == {
        "n_tokens", "n_scored_tokens", "score_conditioning", "ppl", "galp"
    }
    lalp = Scorer(method="lalp", window=2)
    assert {"lalp", "step_logps"} <= lalp.produces and "galp" not in lalp.produces
    assert lalp.with_columns({"lalp"}) is lalp
    widened = lalp.with_columns({"galp"})
    assert widened.method == "all" and widened.window == 2 and lalp.method == "lalp"
    assert widened.produces >= {"lalp", "galp", "ppl", "step_logps"}
    assert Scorer(method="ppl").with_columns({"step_logps"}).method == "all"
    assert Scorer(method="ppl").with_columns({"n_tokens"}).method == "ppl"
    with pytest.raises(ValueError, match="no method produces \\['correct'\\]"):
        lalp.with_columns({"correct"})
