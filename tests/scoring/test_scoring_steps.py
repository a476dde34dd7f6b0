"""Step splitters, token-to-step mapping, LALP windows and batching helpers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from reasonft.scoring.batching import first_fit_decreasing, length_sorted_batches, pad_right
from reasonft.scoring.lalp import check_window, window_groups, window_size
from reasonft.scoring.steps import (
    FieldSteps,
    NewlineSteps,
    ParagraphSteps,
    RegexSteps,
    SentenceSteps,
    as_splitter,
    splitter_from_config,
)
from reasonft.scoring.token_steps import ensure_scored_token, token_step_ids

TRICKY = [
    "",
    "   ",
    "\n",
    "\n\n\n",
    "no blank line at all",
    "one line\nanother line\nthird",
    "\n\nleading blank lines\n\nmiddle\n\n",
    "trailing blank lines\n\n\n\n",
    "many\n\n\n\n\nblank\n \t \n\nlines",
    "windows\r\n\r\nline\r\nends\r\n \r\nhere\r\n",
    '3.5 is not a sentence end. But this is! Is it? Yes...  "Quoted." (Paren.) end',
    "<think>\nStep 1: 3 + 4 = 7\n\nStep 2: 7 * 2 = 14\n</think>\n\\boxed{14}",
    "unicode: é€ 你好。下一句！\n\n最后",
]
SPLITTERS = [
    ParagraphSteps(),
    NewlineSteps(),
    SentenceSteps(),
    RegexSteps(r"(?m)^(?=Step \d)"),
    RegexSteps(r","),
]


@pytest.mark.parametrize("splitter", SPLITTERS, ids=repr)
@pytest.mark.parametrize("text", TRICKY)
def test_steps_concatenate_exactly(splitter, text):
    steps = splitter(text, {})
    assert "".join(steps) == text
    assert all(steps), "no empty step"
    if text.strip():
        assert all(s.strip() for s in steps), "no whitespace-only step when there is text"
    else:
        assert steps == ([text] if text else [])


def test_paragraph_steps_exact_cuts():
    split = ParagraphSteps()
    assert split("A\n\nB", {}) == ["A\n\n", "B"]
    assert split("\n\nA\n\n\nB\n \t\nC\n\n", {}) == ["\n\nA\n\n\n", "B\n \t\n", "C\n\n"]
    assert split("A\r\n\r\nB\r\nC", {}) == ["A\r\n\r\n", "B\r\nC"]
    assert split("A\nB\nC", {}) == ["A\nB\nC"]
    assert split("A\n\n  indented", {}) == ["A\n\n", "  indented"]


def test_other_splitters_exact_cuts():
    assert NewlineSteps()("a\nb\n\n\nc", {}) == ["a\n", "b\n\n\n", "c"]
    assert SentenceSteps()("x = 3.5. Next one!  Done?\nLast", {}) == [
        "x = 3.5. ",
        "Next one!  ",
        "Done?\n",
        "Last",
    ]
    assert SentenceSteps()('He said "ok." Then left.', {}) == ['He said "ok." ', "Then left."]
    assert RegexSteps(r"(?m)^(?=Step \d)")("Step 1: a\nStep 2: b", {}) == [
        "Step 1: a\n",
        "Step 2: b",
    ]


def test_regex_config_default_pattern_splits_step_markers():
    split = splitter_from_config("regex")
    text = "Plan.\nStep 1: 8 / 2 = 4\n  Step 2) 4 + 9 = 13\nStep 3. done"
    assert split(text, {}) == [
        "Plan.\n",
        "Step 1: 8 / 2 = 4\n",
        "  Step 2) 4 + 9 = 13\n",
        "Step 3. done",
    ]


def test_bad_regex_is_a_clear_error():
    with pytest.raises(ValueError, match="pattern"):
        RegexSteps("(unclosed")


def test_field_steps_accepted_as_they_are():
    record = {"prompt_id": "p7", "steps": ["Fir", "st.\n\n", "", "Second"]}
    assert FieldSteps()("First.\n\nSecond", record) == ["Fir", "st.\n\n", "", "Second"]


def test_field_steps_mismatch_names_record_and_position():
    record = {"prompt_id": "p7", "source": "r1", "steps": ["First.\n", "Second"]}
    with pytest.raises(ValueError, match=r"prompt_id='p7'.*character 7") as err:
        FieldSteps()("First.\n\nSecond", record)
    assert "'\\nSecond'" in str(err.value)
    with pytest.raises(ValueError, match="missing"):
        FieldSteps()("x", {"prompt_id": "p1"})
    with pytest.raises(ValueError, match="list of strings"):
        FieldSteps()("x", {"prompt_id": "p1", "steps": "x"})
    with pytest.raises(ValueError, match="concatenate"):
        FieldSteps()("abc", {"steps": ["abc", "d"]})


@pytest.mark.parametrize(
    "name, cls",
    [
        ("paragraph", ParagraphSteps),
        ("newline", NewlineSteps),
        ("sentence", SentenceSteps),
        ("regex", RegexSteps),
        ("field", FieldSteps),
    ],
)
def test_every_steps_config_builds_its_splitter(name, cls):
    assert type(splitter_from_config(name)) is cls
    assert type(as_splitter(name)) is cls


def test_unknown_steps_config_lists_options():
    with pytest.raises(ValueError, match=r"paragraph"):
        splitter_from_config("paragraphs")
    assert (
        type(as_splitter({"_target_": "reasonft.scoring.steps.RegexSteps", "pattern": ";"}))
        is RegexSteps
    )


# ------------------------------------------------------------------ tokens -> steps
def _reference_token_steps(offsets, steps):
    """Plain: the step containing each token's first character; then drop empty steps."""
    owner = []
    for start, _ in offsets:
        pos = 0
        for s, text in enumerate(steps):
            if pos <= start < pos + len(text) or (s == len(steps) - 1):
                owner.append(s)
                break
            pos += len(text)
    kept = sorted(set(owner))
    return [kept.index(o) for o in owner], len(steps) - len(kept)


def test_straddling_token_belongs_to_step_where_it_starts(tiny_tokenizer):
    text = "Compute (12 - 5)"
    enc = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"][0] == (0, 3)  # "Com" is one token
    ids, merged = token_step_ids(enc["offset_mapping"], ["Co", "mpute (12 - 5)"])
    assert ids.tolist()[:2] == [0, 1] and merged == 0
    # "m" lies inside the token "Com": that step owns no token and is merged (counted).
    ids, merged = token_step_ids(enc["offset_mapping"], ["Co", "m", "pute (12 - 5)"])
    assert ids.tolist()[:2] == [0, 1] and merged == 1 and ids.max() == 1


@pytest.mark.parametrize(
    "text", [t for t in TRICKY if t] + ["é€ 你好", "Step 1: 8 / 2 = 4\nStep 2: 13"]
)
def test_token_steps_match_reference(tiny_tokenizer, text):
    enc = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for splitter in SPLITTERS:
        steps = splitter(text, {})
        ids, merged = token_step_ids(enc["offset_mapping"], steps)
        ref, ref_merged = _reference_token_steps(enc["offset_mapping"], steps)
        assert ids.tolist() == ref and merged == ref_merged
        assert np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)


def test_unscorable_one_token_steps_merge_without_prompt():
    steps = np.array([0, 1, 1, 2, 3, 3])
    # With a prompt nothing changes.
    same, merged = ensure_scored_token(steps, lambda i: 0, has_context=True)
    assert same.tolist() == steps.tolist() and merged == 0
    # k = 0, no prompt: step 0 (one token) -> into step 1; step 2 (one token) -> into step 3.
    ids, merged = ensure_scored_token(steps, lambda i: 0, has_context=False)
    assert ids.tolist() == [0, 0, 0, 1, 1, 1] and merged == 2
    # k >= 1: only the first step has an empty window.
    ids, merged = ensure_scored_token(steps, lambda i: min(i, 1), has_context=False)
    assert ids.tolist() == [0, 0, 0, 1, 2, 2] and merged == 1
    # A last one-token step with an empty window goes into the step before.
    ids, merged = ensure_scored_token(np.array([0, 0, 1]), lambda i: 0, has_context=False)
    assert ids.tolist() == [0, 0, 0] and merged == 1
    # A single one-token step cannot be helped: it stays (the scorer reports it unscorable).
    ids, merged = ensure_scored_token(np.array([0]), lambda i: 0, has_context=False)
    assert ids.tolist() == [0] and merged == 0


# ------------------------------------------------------------------ windows
@pytest.mark.parametrize("window", [0, 1, 4, 100, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("rounding", ["ceil", "floor"])
def test_window_sizes_and_groups(window, rounding):
    n = 41
    for i in range(n):
        if isinstance(window, int):
            expected = min(window, i)
        else:
            num = round(window * 100) * i  # window has at most two decimals here
            expected = -(-num // 100) if rounding == "ceil" else num // 100
        assert window_size(i, window, rounding) == expected
    groups = window_groups(n, window, rounding)
    covered = [step for _, first, last in groups for step in range(first, last + 1)]
    assert covered == list(range(n))
    for start, first, last in groups:
        for i in range(first, last + 1):
            assert i - window_size(i, window, rounding) == start
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)


def test_window_examples():
    assert window_groups(6, 2) == [(0, 0, 2), (1, 3, 3), (2, 4, 4), (3, 5, 5)]
    assert window_groups(6, 100) == [(0, 0, 5)]
    assert window_groups(5, 0) == [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)]
    assert (
        window_size(30, 0.1) == 3
        and window_size(31, 0.1) == 4
        and window_size(31, 0.1, "floor") == 3
    )
    assert window_groups(4, 1.0) == [(0, 0, 3)]


@pytest.mark.parametrize("bad", [-1, 0.0, 1.5, True, "4", None])
def test_bad_windows_raise(bad):
    with pytest.raises((ValueError, TypeError), match="score.window"):
        check_window(bad)
    with pytest.raises(ValueError, match="window_rounding"):
        check_window(4, "round")


# ------------------------------------------------------------------ batching
def test_length_sorted_batches_respect_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 120) for _ in range(200)] + [500]
    batches = length_sorted_batches(lengths, 256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) * longest <= 256 or len(b) == 1
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert batches[0] == [200]  # longer than the budget: alone, first
    assert length_sorted_batches([3, 3, 3], 6) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="batch_tokens"):
        length_sorted_batches([1], 0)


def test_first_fit_decreasing_packs_under_capacity():
    rng = random.Random(1)
    lengths = [rng.randint(1, 50) for _ in range(100)]
    bins = first_fit_decreasing(lengths, 50)
    assert sorted(i for b in bins for i in b) == list(range(100))
    assert all(sum(lengths[i] for i in b) <= 50 for b in bins)
    assert len(bins) <= math.ceil(sum(lengths) / 50) * 11 / 9 + 1  # FFD bound
    assert first_fit_decreasing([60, 10], 50) == [[0], [1]]


def test_pad_right():
    ids, att = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and att.tolist() == [[1, 1, 1], [1, 0, 0]]
