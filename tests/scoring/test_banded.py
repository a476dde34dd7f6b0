"""Banded LALP (scoring/banded.py): its mask, its limits (GALP; one layer) and the Scorer option,
each against a plain construction written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reasonft.scoring.banded import (
    band_mask,
    band_positions,
    banded_token_logprobs,
    predictor_rows,
    row_band_starts,
    token_window_starts,
)
from reasonft.scoring.galp import global_token_logprobs
from reasonft.scoring.lalp import local_token_logprobs
from reasonft.scoring.scorer import Scorer
from reasonft.scoring.token_steps import ScoringExample

RECORDS = [
    {
        "prompt_id": "a",
        "prompt": "Compute 3 + 4.",
        "response": "<think>\n3 + 4 = 7\n\nThen 7 * 2 = 14\n\nSo the answer is 14.\n</think>\n\\boxed{14}",
    },
    {
        "prompt_id": "b",
        "prompt": "Compute (12 - 5) * 3. Let's reason step by step.",
        "response": "First, we subtract five from twelve, which gives seven.\n\nNext, multiply by three: 21.\n\n\\boxed{21}",
    },
    {
        "prompt_id": "e",
        "prompt": "Compute 3 + 4.",
        "response": "\n\n".join(f"Step {i}: {i} + 4 = {i + 4}" for i in range(1, 11)),
    },
]
WINDOWS = [(0, "ceil"), (1, "ceil"), (2, "ceil"), (0.25, "ceil"), (0.3, "floor"), (0.5, "ceil")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ref_window(i: int, window: float, rounding: str) -> int:
    if isinstance(window, int):
        return min(window, i)
    exact = window * i
    size = math.floor(exact + 1e-9) if rounding == "floor" else math.ceil(exact - 1e-9)
    return min(i, size)


def ref_context(token_step: list[int], t: int, prompt_len: int, window, rounding) -> set[int]:
    """The positions (prompt + response) LocalLP conditions response token t on: the prompt, the
    steps i-w_i..i-1 of t's step i, and the tokens of step i before t."""
    i = token_step[t]
    first_step = i - ref_window(i, window, rounding)
    context = set(range(prompt_len))
    for r in range(t):
        if first_step <= token_step[r] <= i:
            context.add(prompt_len + r)
    return context


@pytest.mark.parametrize("prompt_len", [0, 3])
@pytest.mark.parametrize("window, rounding", WINDOWS)
def test_mask_admits_exactly_the_windows_tokens(prompt_len, window, rounding):
    rng = np.random.default_rng(0)
    for _ in range(5):
        lengths = rng.integers(1, 5, size=int(rng.integers(1, 9)))
        token_step = [s for s, n in enumerate(lengths) for _ in range(n)]
        lo = token_window_starts(np.asarray(token_step), window, rounding)
        mask = band_mask(prompt_len, row_band_starts(lo)).numpy()
        rows = predictor_rows(prompt_len, lo)
        length = prompt_len + len(token_step)
        assert mask.shape == (length, length)
        assert not np.triu(mask, 1).any()  # nothing sees the future
        for t in range(len(token_step)):
            context = ref_context(token_step, t, prompt_len, window, rounding)
            if not context:  # nothing to predict from: unscored, as exact LALP
                assert rows[t] == -1
                continue
            row = rows[t]
            # The predicting row sees its context and itself (it is the last context token,
            # or, for an empty window, the last prompt token).
            assert row == max(context)
            assert set(np.flatnonzero(mask[row]).tolist()) == context
        for q in range(prompt_len):  # prompt rows are plainly causal
            assert set(np.flatnonzero(mask[q]).tolist()) == set(range(q + 1))


def _examples(tokenizer, condition: bool, window, rounding="ceil") -> list[ScoringExample]:
    scorer = Scorer(
        method="lalp", window=window, window_rounding=rounding, condition_on_prompt=condition,
        progress=False,
    )  # fmt: skip
    return scorer.encode(RECORDS, range(len(RECORDS)), tokenizer)


@pytest.mark.parametrize("positions", ["global", "local"])
@pytest.mark.parametrize("condition", [True, False], ids=["prompt", "no-prompt"])
def test_window_covering_every_step_gives_galp_token_logprobs(
    tiny_model, tiny_tokenizer, condition, positions
):
    for window in (1000, 1.0):
        examples = _examples(tiny_tokenizer, condition, window)
        assert max(ex.n_steps for ex in examples) >= 10
        with torch.no_grad():
            full, _ = global_token_logprobs(tiny_model, examples)
            banded = banded_token_logprobs(tiny_model, examples, window, positions=positions)
        for f, b in zip(full, banded):
            np.testing.assert_array_equal(np.isnan(f), np.isnan(b))
            np.testing.assert_allclose(b, f, atol=2e-5, rtol=0)


def _one_layer(tiny_model):
    from reasonft.models.loading import random_student

    config = {
        k: tiny_model.config.to_dict()[k]
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings")
    }  # fmt: skip
    return random_student(
        {"model_type": "qwen2", **config, "num_hidden_layers": 1}, seed=1
    ).eval()


def ref_one_layer_logps(model, ex: ScoringExample, window, positions: str) -> np.ndarray:
    """One plain forward per token, over exactly the tokens its row admits (prompt + window + own
    prefix), at the position ids the banded pass gives them: in one layer a row's output reads
    only the embeddings of the keys it admits, so this is what the banded pass computes."""
    p, tokens = len(ex.prompt_ids), ex.response_ids
    token_step = ex.token_step.tolist()
    lo = token_window_starts(ex.token_step, window)
    pos = band_positions(p, row_band_starts(lo), positions)
    seq = np.concatenate([ex.prompt_ids, tokens])
    out = np.full(len(tokens), np.nan)
    for t in range(len(tokens)):
        context = sorted(ref_context(token_step, t, p, window, "ceil"))
        if not context:
            continue
        with torch.no_grad():
            logits = model(
                input_ids=torch.as_tensor(seq[context])[None],
                position_ids=torch.as_tensor(pos[context])[None],
            ).logits[0, -1]
        out[t] = torch.log_softmax(logits.double(), -1)[tokens[t]].item()
    return out


@pytest.mark.parametrize("positions", ["global", "local"])
@pytest.mark.parametrize("condition", [True, False], ids=["prompt", "no-prompt"])
def test_one_layer_window_one_matches_plain_reference(
    tiny_model, tiny_tokenizer, condition, positions
):
    model = _one_layer(tiny_model)
    examples = _examples(tiny_tokenizer, condition, 1)
    with torch.no_grad():
        banded = banded_token_logprobs(model, examples, 1, positions=positions, chunk_tokens=7)
    for ex, b in zip(examples, banded):
        ref = ref_one_layer_logps(model, ex, 1, positions)
        np.testing.assert_array_equal(np.isnan(ref), np.isnan(b))
        np.testing.assert_allclose(b, ref, atol=2e-5, rtol=0)


def test_one_layer_without_prompt_is_exact_lalp(tiny_model, tiny_tokenizer):
    """Without a prompt and with global positions, a one-layer row sees what exact LALP's pass
    gives it at the same relative distances (RoPE), so the two agree token by token."""
    model = _one_layer(tiny_model)
    for window in (1, 2, 0.25):
        examples = _examples(tiny_tokenizer, False, window)
        with torch.no_grad():
            exact = local_token_logprobs(model, examples, window)
            banded = banded_token_logprobs(model, examples, window)
        for e, b in zip(exact, banded):
            np.testing.assert_array_equal(np.isnan(e), np.isnan(b))
            np.testing.assert_allclose(b, e, atol=2e-5, rtol=0)


def test_two_layers_differ_from_exact_lalp(tiny_model, tiny_tokenizer):
    """The approximation is one: with two layers, earlier steps leak in through the keys."""
    examples = _examples(tiny_tokenizer, True, 1)
    with torch.no_grad():
        exact = local_token_logprobs(tiny_model, examples, 1)
        banded = banded_token_logprobs(tiny_model, examples, 1)
    gap = max(np.nanmax(np.abs(e - b)) for e, b in zip(exact, banded))
    assert gap > 1e-4


def test_scorer_option_fills_lalp_from_the_banded_pass(tiny_model, tiny_tokenizer):
    from reasonft.scoring import averages

    examples = _examples(tiny_tokenizer, True, 0.25)
    with torch.no_grad():
        banded = banded_token_logprobs(tiny_model, examples, 0.25, positions="local")
    for method in ("lalp", "all"):
        scorer = Scorer(
            method=method, window=0.25, lalp_pass="banded", band_positions="local",
            batch_tokens=64, progress=False,
        )  # fmt: skip
        scored, report = scorer(RECORDS, tiny_model, tiny_tokenizer)
        out = scored.to_list()
        for row, ex, b in zip(out, examples, banded):
            ref = averages.step_means(b, ex.token_step, ex.n_steps)
            np.testing.assert_allclose(row["step_logps"], ref, atol=1e-5, rtol=0)
            assert row["lalp"] == pytest.approx(np.mean(ref), abs=1e-5)
            assert (row["galp"] is not None) == (method == "all")
        assert report["lalp_pass"] == "banded" and report["window"] == 0.25
    widened = Scorer(method="lalp", lalp_pass="banded", progress=False).with_columns({"galp"})
    assert (widened.method, widened.lalp_pass) == ("all", "banded")


@pytest.mark.parametrize(
    "kwargs, key",
    [({"lalp_pass": "fast"}, "score.lalp_pass"), ({"band_positions": "x"}, "score.band_positions")],
)
def test_bad_banded_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Scorer(method="lalp", **kwargs)


def test_lalp_banded_config_builds_a_banded_scorer():
    from hydra.utils import instantiate

    from reasonft.config import compose_option

    scorer = instantiate(compose_option("score", "lalp_banded"))
    assert (scorer.method, scorer.lalp_pass, scorer.band_positions) == ("lalp", "banded", "global")


@pytest.mark.parametrize("window", [1, 0.25, 1000])
def test_block_skipping_attention_equals_dense_masked_sdpa(
    tiny_model, tiny_tokenizer, monkeypatch, window
):
    """Skipping the key columns a query block cannot see changes nothing but the work (small
    blocks, so that some skip columns even on these short responses)."""
    from reasonft.scoring import band_attention

    monkeypatch.setattr(band_attention, "BLOCK", 8)
    for condition in (True, False):
        examples = _examples(tiny_tokenizer, condition, window)
        with torch.no_grad():
            dense = banded_token_logprobs(tiny_model, examples, window, skip_blocks=False)
            blocks = banded_token_logprobs(tiny_model, examples, window, skip_blocks=True)
        for d, b in zip(dense, blocks):
            np.testing.assert_array_equal(np.isnan(d), np.isnan(b))
            np.testing.assert_allclose(b, d, atol=2e-5, rtol=0)
    assert tiny_model.config._attn_implementation == "sdpa"  # restored
    ex = examples[-1]
    lo = row_band_starts(token_window_starts(ex.token_step, window))
    mask = band_mask(len(ex.prompt_ids), lo)[None, None]
    plan = band_attention._plan(mask, 8)
    skipping = [blk for blk in plan if not isinstance(blk.keys, int)]
    assert bool(skipping) == (window != 1000)
    for blk in plan:  # the columns left out are seen by no row of the block
        kept = torch.zeros(mask.shape[-1], dtype=torch.bool)
        kept[blk.keys if not isinstance(blk.keys, int) else slice(0, blk.keys)] = True
        assert not mask[0, 0, blk.start : blk.end][:, ~kept].any()


def test_shard_signature_tells_banded_from_exact():
    """A resumed scoring run never reuses exact LALP's shards for banded LALP (or across the
    position choices)."""
    import datasets

    from reasonft.scoring.predict import Scoring

    records = datasets.Dataset.from_list(RECORDS)
    signatures = {
        Scoring(records, Scorer(method="lalp", progress=False, **kwargs), None).signature()
        for kwargs in (
            {},
            {"lalp_pass": "banded"},
            {"lalp_pass": "banded", "band_positions": "local"},
        )
    }
    assert len(signatures) == 3
