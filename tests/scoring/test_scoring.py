"""PPL, GALP and LALP of the scorer against `scoring.reference`, the plain definitions."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch

from reasonft.data.prompts import IGNORE_INDEX, PromptFormat, build_prompt, encode_example
from reasonft.scoring import reference
from reasonft.scoring.api import score
from reasonft.scoring.galp import global_token_logprobs
from reasonft.scoring.lalp import local_token_logprobs
from reasonft.scoring.scorer import Scorer
from reasonft.scoring.steps import FieldSteps, ParagraphSteps

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
        "prompt_id": "c",
        "prompt": "What is 8 / 2 + 9?",
        "response": "\n\nStep 1: 8 / 2 = 4\n\nStep 2: 4 + 9 = 13\n\n\\boxed{13}\n\nDone.\n\n\n\nReally done.\n\n7",
    },
    {"prompt_id": "d", "prompt": "Add.", "response": "\\boxed{14}"},
    {
        "prompt_id": "e",
        "prompt": "Compute 3 + 4.",
        "response": "\n\n".join(f"Step {i}: {i} + 4 = {i + 4}" for i in range(1, 13)),
    },
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: on 2 shared cores, 2 OpenMP threads make each op wait for a busy core (~100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------- the records as the reference takes them
def ref_prompt_ids(tok, record, condition):
    return (
        tok(build_prompt(record["prompt"], tok), add_special_tokens=False)["input_ids"]
        if condition
        else []
    )


def ref_step_logps(model, tok, record, window, rounding, condition, steps):
    """`reference.local_lps` of the record's steps (text) as token ids: each token belongs to the
    step its first character is in; without a prompt, a one-token step that nothing precedes is
    merged into its neighbour (as the scorer documents)."""
    prompt = ref_prompt_ids(tok, record, condition)
    enc = tok(record["response"], add_special_tokens=False, return_offsets_mapping=True)
    starts = np.cumsum([0] + [len(s) for s in steps])
    owner = [max(s for s in range(len(steps)) if starts[s] <= a) for a, _ in enc["offset_mapping"]]
    kept = sorted(set(owner))
    owner = [kept.index(o) for o in owner]
    n_steps = len(kept)
    i = 0
    while not prompt and i < n_steps and n_steps > 1:
        if owner.count(i) == 1 and reference.window_steps(i, window, rounding) == 0:
            owner = (
                [o - 1 if o > i else o for o in owner]
                if i + 1 < n_steps
                else [min(o, i - 1) for o in owner]
            )
            n_steps -= 1
        else:
            i += 1
    token_steps = [[t for t, o in zip(enc["input_ids"], owner) if o == s] for s in range(n_steps)]
    return reference.local_lps(model, prompt, token_steps, window, rounding)


def ref_galp(model, tok, record, condition):
    response = tok(record["response"], add_special_tokens=False)["input_ids"]
    return reference.galp(model, ref_prompt_ids(tok, record, condition), response)


def hf_labels_loss(model, tok, record, condition):
    prompt = ref_prompt_ids(tok, record, condition)
    response = tok(record["response"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + response])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + response])
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


# ------------------------------------------------------------------ LALP
WINDOWS = [(0, "ceil"), (1, "ceil"), (3, "ceil"), (0.3, "ceil"), (0.3, "floor"), (0.6, "ceil")]


@pytest.mark.parametrize("condition", [True, False], ids=["prompt", "no-prompt"])
@pytest.mark.parametrize("window, rounding", WINDOWS)
def test_lalp_equals_one_pass_per_window(tiny_model, tiny_tokenizer, window, rounding, condition):
    refs = [
        ref_step_logps(
            tiny_model,
            tiny_tokenizer,
            r,
            window,
            rounding,
            condition,
            ParagraphSteps()(r["response"], r),
        )
        for r in RECORDS
    ]
    # "lalp" encodes prompts on its own; "all" reuses the GALP pass. Small budgets force several
    # batches and packed micro-batches; small chunks several vocabulary projections.
    for method, batch_tokens, chunk_tokens in (
        ("lalp", 4096, 4096),
        ("lalp", 48, 7),
        ("all", 4096, 4096),
        ("all", 60, 5),
    ):
        scorer = Scorer(
            method=method,
            window=window,
            window_rounding=rounding,
            condition_on_prompt=condition,
            batch_tokens=batch_tokens,
            chunk_tokens=chunk_tokens,
            progress=False,
        )
        out, report = scorer(RECORDS, tiny_model, tiny_tokenizer)
        for row, ref in zip(out.to_list(), refs):
            assert len(row["step_logps"]) == len(ref)
            np.testing.assert_allclose(row["step_logps"], ref, atol=1e-5, rtol=0)
            assert row["lalp"] == pytest.approx(sum(ref) / len(ref), abs=1e-5)
        assert report["unscorable"] == 0 and report["records"] == len(RECORDS)


@pytest.mark.parametrize("condition", [True, False], ids=["prompt", "no-prompt"])
def test_lalp_with_window_covering_all_steps_has_galp_token_logprobs(
    tiny_model, tiny_tokenizer, condition
):
    scorer = Scorer(method="lalp", window=1000, condition_on_prompt=condition, progress=False)
    examples = scorer.encode(RECORDS, range(len(RECORDS)), tiny_tokenizer)
    with torch.no_grad():
        full, _ = global_token_logprobs(tiny_model, examples)
        local = local_token_logprobs(tiny_model, examples, window=1000, batch_tokens=64)
    for f, l in zip(full, local):
        np.testing.assert_array_equal(np.isnan(f), np.isnan(l))
        np.testing.assert_allclose(l, f, atol=1e-5, rtol=0)
    # ... so LALP is the mean of the per-step means of GALP's token log-probs.
    out = scorer(RECORDS, tiny_model, tiny_tokenizer)[0].to_list()
    for row, ex, f in zip(out, examples, full):
        step_means = [
            np.nanmean(f[ex.token_step == s].astype(np.float64)) for s in range(ex.n_steps)
        ]
        assert row["lalp"] == pytest.approx(np.mean(step_means), abs=1e-5)


def _tiny_eager(tiny_model):
    from reasonft.models.loading import random_student

    config = tiny_model.config.to_dict()
    keep = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
    )
    model = random_student(
        {"model_type": "qwen2", **{k: config[k] for k in keep}}, seed=0, attn_implementation="eager"
    )
    model.load_state_dict(tiny_model.state_dict())
    return model.eval()


def test_eager_attention_gives_the_same_lalp(tiny_model, tiny_tokenizer):
    eager = _tiny_eager(tiny_model)
    assert eager.config._attn_implementation == "eager"
    kwargs = {"method": "all", "window": 2, "batch_tokens": 64, "progress": False}
    a = Scorer(**kwargs)(RECORDS, eager, tiny_tokenizer)[0].to_list()
    b = Scorer(**kwargs)(RECORDS, tiny_model, tiny_tokenizer)[0].to_list()
    ref = [
        ref_step_logps(
            tiny_model, tiny_tokenizer, r, 2, "ceil", True, ParagraphSteps()(r["response"], r)
        )
        for r in RECORDS
    ]
    for x, y, r in zip(a, b, ref):
        np.testing.assert_allclose(x["step_logps"], r, atol=1e-5, rtol=0)
        np.testing.assert_allclose(y["step_logps"], r, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ GALP / PPL
@pytest.mark.parametrize("condition", [True, False], ids=["prompt", "no-prompt"])
def test_galp_equals_reference_and_ppl_is_exp_minus_galp(
    tiny_model, tiny_tokenizer, condition
):
    scorer = Scorer(
        method="galp",
        condition_on_prompt=condition,
        batch_tokens=4096,
        chunk_tokens=5,
        progress=False,
    )
    out = scorer(RECORDS, tiny_model, tiny_tokenizer)[0].to_list()
    for row, record in zip(out, RECORDS):
        want = ref_galp(tiny_model, tiny_tokenizer, record, condition)
        assert row["galp"] == pytest.approx(want, abs=1e-5)
        # The reference is the negated mean cross-entropy that a causal LM's `labels=` gives.
        assert want == pytest.approx(
            -hf_labels_loss(tiny_model, tiny_tokenizer, record, condition), abs=1e-5
        )
        assert row["ppl"] == pytest.approx(math.exp(-row["galp"]), rel=1e-12)
        response = tiny_tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        prompt = ref_prompt_ids(tiny_tokenizer, record, condition)
        assert row["ppl"] == pytest.approx(reference.ppl(tiny_model, prompt, response), rel=1e-5)
        assert row["lalp"] is None and row["step_logps"] is None
        assert row["score_conditioning"] == ("prompt" if condition else "none")
        example = encode_example(
            build_prompt(record["prompt"], tiny_tokenizer), record["response"], tiny_tokenizer
        )
        assert row["n_tokens"] == len(example["input_ids"]) - example["prompt_len"]  # no terminator


def test_ppl_method_and_conditioning_switch(tiny_model, tiny_tokenizer):
    with_prompt = Scorer(method="ppl", condition_on_prompt=True, progress=False)(
        RECORDS, tiny_model, tiny_tokenizer
    )[0]
    alone = Scorer(method="ppl", condition_on_prompt=False, progress=False)(
        RECORDS, tiny_model, tiny_tokenizer
    )[0]
    assert set(with_prompt["score_conditioning"]) == {"prompt"} and set(
        alone["score_conditioning"]
    ) == {"none"}
    for a, b in zip(with_prompt.to_list(), alone.to_list()):
        assert a["ppl"] == pytest.approx(math.exp(-a["galp"]), rel=1e-12)
        assert b["ppl"] == pytest.approx(math.exp(-b["galp"]), rel=1e-12)
        assert abs(a["ppl"] - b["ppl"]) > 1e-6
        assert a["n_tokens"] == b["n_tokens"]


def test_all_method_fills_every_column(tiny_model, tiny_tokenizer):
    ds = datasets.Dataset.from_list(RECORDS)
    out = Scorer(method="all", window=2, progress=False)(ds, tiny_model, tiny_tokenizer)[0]
    assert out.column_names == ds.column_names + [
        "n_tokens",
        "n_scored_tokens",
        "ppl",
        "galp",
        "lalp",
        "step_logps",
        "score_conditioning",
    ]
    galp = Scorer(method="galp", progress=False)(ds, tiny_model, tiny_tokenizer)[0]
    lalp = Scorer(method="lalp", window=2, progress=False)(ds, tiny_model, tiny_tokenizer)[0]
    np.testing.assert_allclose(out["galp"], galp["galp"], atol=1e-6)
    np.testing.assert_allclose(out["lalp"], lalp["lalp"], atol=1e-6)
    assert out["prompt_id"] == ds["prompt_id"]


# ------------------------------------------------------------------ edge cases
def test_unscorable_records_are_counted_not_dropped(tiny_model, tiny_tokenizer):
    records = [{"prompt": "Add.", "response": ""}, {"prompt": "Add.", "response": "7"}, RECORDS[0]]
    out, report = score(
        records,
        tiny_model,
        tiny_tokenizer,
        method="all",
        condition_on_prompt=False,
        return_report=True,
        progress=False,
    )
    assert [r["n_tokens"] for r in out] == [0, 1, out[2]["n_tokens"]]
    for r in out[:2]:
        assert (
            r["ppl"] is None and r["galp"] is None and r["lalp"] is None and r["step_logps"] is None
        )
    assert out[2]["lalp"] is not None
    assert report["unscorable"] == 2 and report["scored"] == 1 and report["records"] == 3


def test_one_token_first_step_without_prompt_is_merged(tiny_model, tiny_tokenizer):
    response = "7\n\nThen 7 * 2 = 14\n\nSo 14"
    record = {
        "prompt": "x",
        "response": response,
        "steps": ["7", "\n\nThen 7 * 2 = 14\n\n", "So 14"],
    }
    assert len(tiny_tokenizer("7", add_special_tokens=False)["input_ids"]) == 1
    scorer = Scorer(
        method="lalp", window=1, steps="field", condition_on_prompt=False, progress=False
    )
    scored, report = scorer([record], tiny_model, tiny_tokenizer)
    row = scored.to_list()[0]
    ref = ref_step_logps(
        tiny_model, tiny_tokenizer, record, 1, "ceil", False, ["7\n\nThen 7 * 2 = 14\n\n", "So 14"]
    )
    np.testing.assert_allclose(row["step_logps"], ref, atol=1e-5, rtol=0)
    assert report["merged_steps"] == 1 and report["steps"] == 2
    # With the prompt, the one-token step is scored on its own.
    scorer = Scorer(
        method="lalp", window=1, steps=FieldSteps(), condition_on_prompt=True, progress=False
    )
    assert len(scorer([record], tiny_model, tiny_tokenizer)[0]["step_logps"][0]) == 3


def test_field_steps_error_names_the_row(tiny_model, tiny_tokenizer):
    bad = [RECORDS[0] | {"steps": [RECORDS[0]["response"]]}, RECORDS[1] | {"steps": ["First", "x"]}]
    with pytest.raises(ValueError, match=r"row 1.*prompt_id='b'.*concatenate"):
        Scorer(method="lalp", steps="field", progress=False)(bad, tiny_model, tiny_tokenizer)[0]


def test_bad_records_and_settings_are_clear_errors(tiny_model, tiny_tokenizer):
    scored = Scorer(method="galp", progress=False)(RECORDS[:1], tiny_model, tiny_tokenizer)[0]
    with pytest.raises(ValueError, match="already carry"):
        Scorer(method="galp", progress=False)(scored, tiny_model, tiny_tokenizer)[0]
    with pytest.raises(ValueError, match="response"):
        Scorer(progress=False)([{"prompt": "x"}], tiny_model, tiny_tokenizer)[0]
    with pytest.raises(ValueError, match="empty prompt"):
        Scorer(prompt_format=PromptFormat(chat_template=False), progress=False)(
            [{"prompt": "", "response": "7"}], tiny_model, tiny_tokenizer
        )[0]
    with pytest.raises(ValueError, match="score.method"):
        Scorer(method="local")
    with pytest.raises(ValueError, match="score.window"):
        Scorer(window=-2)


def test_api_list_in_list_out_and_named_steps(tiny_model, tiny_tokenizer):
    out = score(
        RECORDS,
        tiny_model,
        tiny_tokenizer,
        method="lalp",
        window=1,
        steps="sentence",
        progress=True,
    )
    assert isinstance(out, list) and [r["prompt_id"] for r in out] == [
        r["prompt_id"] for r in RECORDS
    ]
    ref = ref_step_logps(
        tiny_model,
        tiny_tokenizer,
        RECORDS[1],
        1,
        "ceil",
        True,
        [
            "First, we subtract five from twelve, which gives seven.\n\n",
            "Next, multiply by three: 21.\n\n",
            "\\boxed{21}",
        ],
    )
    np.testing.assert_allclose(out[1]["step_logps"], ref, atol=1e-5, rtol=0)
    ds_out = score(
        datasets.Dataset.from_list(RECORDS),
        tiny_model,
        tiny_tokenizer,
        method="galp",
        progress=False,
    )
    assert isinstance(ds_out, datasets.Dataset)


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    "name, method, condition",
    [("ppl", "ppl", False), ("galp", "galp", True), ("lalp", "lalp", True)],
)
def test_score_configs_compose_and_instantiate(name, method, condition):
    from hydra import compose
    from hydra.utils import instantiate

    from reasonft.config import package_configs
    from reasonft.scoring.steps import SentenceSteps

    with package_configs():
        cfg = compose(overrides=[f"+score={name}"])
        scorer = instantiate(cfg.score)
        assert (
            isinstance(scorer, Scorer)
            and scorer.method == method
            and scorer.condition_on_prompt is condition
        )
        assert isinstance(scorer.steps, ParagraphSteps) and scorer.window == 4
        cfg = compose(overrides=[f"+score={name}", "score/steps=sentence", "score.window=0.25"])
        scorer = instantiate(cfg.score)
        assert isinstance(scorer.steps, SentenceSteps) and scorer.window == 0.25
