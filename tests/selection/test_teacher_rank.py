"""Teacher ranking by LALP (METHODS.md §2b) on a synthetic pool whose teacher scores are known."""

from __future__ import annotations

import json
from collections import defaultdict

import datasets
import numpy as np
import pytest

from reasonft.selection.api import rank_teachers
from reasonft.selection.teacher_rank import TeacherRanker

# True mean LALP / GALP per teacher: LALP orders QwQ > R1 > Qwen3, GALP the reverse (the paper's story).
TRUE_LALP = {"QwQ": -0.30, "R1": -0.45, "Qwen3": -0.60}
TRUE_GALP = {"QwQ": -0.70, "R1": -0.55, "Qwen3": -0.40}


def synthetic_pool(n_prompts: int = 300, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        difficulty = rng.normal(0.0, 0.1)  # shared by all teachers on this prompt
        for teacher, lalp in TRUE_LALP.items():
            for _ in range(2):
                rows.append(
                    {
                        "prompt_id": p,
                        "source": teacher,
                        "correct": True,
                        "lalp": lalp + difficulty + rng.normal(0.0, 0.05),
                        "galp": TRUE_GALP[teacher] + difficulty + rng.normal(0.0, 0.05),
                    }
                )
        # Incorrect Qwen3 responses with the best scores: counted, Qwen3 would rank first.
        rows.append({"prompt_id": p, "source": "Qwen3", "correct": False, "lalp": 5.0, "galp": 5.0})
        # Student samples must not be ranked as a teacher (excluded by default).
        rows.append({"prompt_id": p, "source": "self", "correct": True, "lalp": 9.0, "galp": 9.0})
    # Prompts only two teachers answered correctly.
    for p in range(n_prompts, n_prompts + 50):
        for teacher in ("QwQ", "R1"):
            rows.append(
                {"prompt_id": p, "source": teacher, "correct": True, "lalp": -0.1, "galp": -0.1}
            )
    return rows


@pytest.fixture(scope="module")
def pool() -> datasets.Dataset:
    return datasets.Dataset.from_list(synthetic_pool())


@pytest.fixture(scope="module")
def ranking(pool):
    return TeacherRanker(n_prompts=200, n_bootstrap=500, seed=42)(pool)


def test_known_ranking(ranking):
    table = ranking.table
    assert [r["source"] for r in table] == ["QwQ", "R1", "Qwen3"]
    assert [r["rank_lalp"] for r in table] == [1, 2, 3]
    assert [r["rank_galp"] for r in table] == [3, 2, 1]
    assert ranking.report["orders_agree"] is False
    assert ranking.report["rank_stability"]["lalp"] == 1.0
    for r in table:
        assert r["mean_lalp"] == pytest.approx(TRUE_LALP[r["source"]], abs=0.03)
        assert r["mean_galp"] == pytest.approx(TRUE_GALP[r["source"]], abs=0.03)
        assert r["n_prompts"] == 200 and r["n_responses"] == 400


def test_means_match_plain_reference(pool, ranking):
    sampled = set(ranking.report["sampled_prompt_ids"])
    assert len(sampled) == 200
    # Only prompts every teacher answered correctly (0..299) may be sampled.
    assert max(sampled) < 300
    per_prompt = defaultdict(list)
    for r in pool:
        if r["correct"] and r["source"] != "self" and r["prompt_id"] in sampled:
            per_prompt[(r["source"], r["prompt_id"])].append(r["lalp"])
    for row in ranking.table:
        prompt_means = [sum(v) / len(v) for (s, _), v in per_prompt.items() if s == row["source"]]
        assert row["mean_lalp"] == pytest.approx(sum(prompt_means) / len(prompt_means), rel=1e-12)


def test_ci_contains_mean_and_matches_a_plain_bootstrap(pool, ranking):
    sampled = sorted(ranking.report["sampled_prompt_ids"])
    scores = defaultdict(lambda: defaultdict(list))
    for r in pool:
        if r["correct"] and r["source"] != "self" and r["prompt_id"] in set(sampled):
            scores[r["source"]][r["prompt_id"]].append(r["lalp"])
    rng = np.random.default_rng(123)  # an independent bootstrap, loop by loop
    for row in ranking.table:
        assert row["ci_low_lalp"] <= row["mean_lalp"] <= row["ci_high_lalp"]
        assert row["ci_low_galp"] <= row["mean_galp"] <= row["ci_high_galp"]
        values = [np.mean(scores[row["source"]][p]) for p in sampled]
        boot = []
        for _ in range(2000):
            draw = rng.integers(0, len(values), size=len(values))
            boot.append(sum(values[i] for i in draw) / len(draw))
        low, high = np.percentile(boot, [2.5, 97.5])
        width = high - low
        assert abs(row["ci_low_lalp"] - low) < 0.25 * width
        assert abs(row["ci_high_lalp"] - high) < 0.25 * width


def test_seeded_and_prompt_shortfall(pool):
    a = TeacherRanker(n_prompts=50, n_bootstrap=100, seed=1)(pool)
    b = TeacherRanker(n_prompts=50, n_bootstrap=100, seed=1)(pool)
    assert a.table == b.table and a.report["sampled_prompt_ids"] == b.report["sampled_prompt_ids"]
    big = TeacherRanker(n_prompts=1000, n_bootstrap=50)(pool)
    assert big.report["n_prompts_used"] == 300 == big.report["n_prompts_eligible"]
    assert big.report["prompt_shortfall"] == 700


def test_common_prompts_off_uses_prompts_any_teacher_answered(pool):
    ranked = TeacherRanker(n_prompts=1000, n_bootstrap=50, common_prompts=False)(pool)
    assert ranked.report["n_prompts_used"] == 350
    by_source = {r["source"]: r for r in ranked.table}
    assert by_source["Qwen3"]["n_prompts"] == 300 and by_source["QwQ"]["n_prompts"] == 350


def test_write_and_api(pool, tmp_path):
    ranked = rank_teachers(pool, n_prompts=100, n_bootstrap=200, seed=3)
    paths = ranked.write(tmp_path)
    assert set(paths) == {"json", "markdown", "png"}
    saved = json.loads(paths["json"].read_text())
    assert [r["source"] for r in saved["table"]] == ["QwQ", "R1", "Qwen3"]
    text = paths["markdown"].read_text()
    assert "| QwQ |" in text and "mean LALP" in text and "mean GALP" in text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["png"].stat().st_size > 5000
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="unknown parameter 'prompts'"):
        rank_teachers(pool, prompts=10)


def test_no_common_prompt_is_a_clear_error():
    rows = [
        {"prompt_id": 0, "source": "A", "correct": True, "lalp": -1.0, "galp": -1.0},
        {"prompt_id": 1, "source": "B", "correct": True, "lalp": -1.0, "galp": -1.0},
    ]
    with pytest.raises(ValueError, match="common_prompts=false"):
        TeacherRanker()(rows)
