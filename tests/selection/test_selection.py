"""Selectors other than the Gaussian one, OXA's combined set, the select() API and the report."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import hydra.utils
import numpy as np
import pytest
from omegaconf import OmegaConf

from reasonft.config import compose_option
from reasonft.selection.api import SELECT_CONF_DIR, available_strategies, select, select_with_report
from reasonft.selection.confident_incorrect import ConfidentIncorrectSelector
from reasonft.selection.oxa import OXASelector
from reasonft.selection.per_prompt import GALPTopSelector, LALPLowestSelector, LALPTopSelector
from reasonft.selection.report import selection_report, write_report
from reasonft.selection.simple import (
    AllSelector,
    LowestPPLSelector,
    RandomSelector,
    SingleTeacherSelector,
)

TEACHERS = ["R1", "QwQ", "Qwen3"]


def make_rows(n_prompts: int = 60, seed: int = 0) -> list[dict]:
    """Teacher responses (3 per teacher-prompt) and self samples, with deliberate score ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for source in [*TEACHERS, "self"]:
            for _ in range(3):
                verdict = rng.random()
                rows.append(
                    {
                        "prompt_id": f"p{p}",
                        "source": source,
                        "correct": None if verdict < 0.05 else bool(verdict < 0.6),
                        # Rounded to 1 decimal: many exact ties in PPL / scores.
                        "ppl": float(np.round(rng.uniform(1.0, 3.0), 1)),
                        "galp": float(np.round(-rng.uniform(0.0, 1.0), 1)),
                        "lalp": float(np.round(-rng.uniform(0.0, 1.0), 1)),
                        "n_tokens": int(rng.integers(10, 500)),
                        "row": len(rows),
                    }
                )
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_rows()


@pytest.fixture(scope="module")
def ds(rows) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows)


def rows_of(selection) -> list[int]:
    return sorted(selection.records["row"])


# ---- plain references --------------------------------------------------------------------------


def ref_lowest_ppl(rows, keep, per_prompt, n):
    """Per prompt its `per_prompt` lowest-PPL kept rows (ties: earlier row), then the n lowest."""
    groups = defaultdict(list)
    for r in rows:
        if keep(r):
            groups[r["prompt_id"]].append(r)
    survivors = []
    for group in groups.values():
        survivors += sorted(group, key=lambda r: (r["ppl"], r["row"]))[:per_prompt]
    survivors.sort(key=lambda r: (r["ppl"], r["row"]))
    return sorted(r["row"] for r in survivors[:n])


def ref_best_per_prompt(rows, score, highest):
    best = {}
    for r in rows:
        if r["correct"] is not True:
            continue
        current = best.get(r["prompt_id"])
        better = current is None or (
            r[score] > current[score] if highest else r[score] < current[score]
        )
        if better:
            best[r["prompt_id"]] = r
    return sorted(r["row"] for r in best.values())


# ---- selectors ---------------------------------------------------------------------------------


def test_confident_incorrect_matches_reference(rows, ds):
    sel = ConfidentIncorrectSelector(n=25, min_ppl=1.2, max_per_prompt=1)(ds)

    def keep(r):
        return r["source"] == "self" and r["correct"] is False and r["ppl"] >= 1.2

    assert rows_of(sel) == ref_lowest_ppl(rows, keep, 1, 25)
    assert len(sel.records) == 25
    assert set(sel.records["loss_type"]) == {"ul"}
    assert set(sel.records["selected_by"]) == {"confident_incorrect"}
    assert all(c is False for c in sel.records["correct"])
    assert min(sel.records["ppl"]) >= 1.2
    assert max(Counter(sel.records["prompt_id"]).values()) == 1
    skipped = sel.report["skipped"]
    assert skipped["source_not_in_sources"] == sum(r["source"] != "self" for r in rows)
    self_rows = [r for r in rows if r["source"] == "self"]
    assert skipped["unverified"] == sum(r["correct"] is None for r in self_rows)
    assert skipped["not_incorrect"] == sum(r["correct"] is True for r in self_rows)
    assert skipped["ppl_below_min_ppl"] == sum(
        r["correct"] is False and r["ppl"] < 1.2 for r in self_rows
    )


def test_confident_incorrect_any_source_two_per_prompt_and_shortfall(rows, ds):
    sel = ConfidentIncorrectSelector(n=10_000, min_ppl=1.5, max_per_prompt=2, sources=None)(ds)

    def keep(r):
        return r["correct"] is False and r["ppl"] >= 1.5

    expected = ref_lowest_ppl(rows, keep, 2, 10_000)
    assert rows_of(sel) == expected
    assert sel.report["shortfall"] == 10_000 - len(expected)


def test_ppl_lowest_matches_reference(rows, ds):
    sel = LowestPPLSelector(n=30, max_per_prompt=1, exclude_sources=["self"])(ds)

    def keep(r):
        return r["source"] != "self" and r["correct"] is True

    assert rows_of(sel) == ref_lowest_ppl(rows, keep, 1, 30)
    assert set(sel.records["selected_by"]) == {"ppl_lowest"}
    assert set(sel.records["loss_type"]) == {"ce"}


@pytest.mark.parametrize(
    "selector_cls,score,highest",
    [
        (GALPTopSelector, "galp", True),
        (LALPTopSelector, "lalp", True),
        (LALPLowestSelector, "lalp", False),
    ],
)
def test_per_prompt_selectors_match_reference(rows, ds, selector_cls, score, highest):
    sel = selector_cls()(ds)
    assert rows_of(sel) == ref_best_per_prompt(rows, score, highest)
    assert len(set(sel.records["prompt_id"])) == len(sel.records)
    assert set(sel.records["selected_by"]) == {selector_cls.name}


def test_per_prompt_counts_prompts_without_a_correct_response():
    rows = [
        {"prompt_id": "a", "source": "T", "correct": True, "lalp": -0.5},
        {"prompt_id": "a", "source": "T", "correct": True, "lalp": -0.5},
        {"prompt_id": "b", "source": "T", "correct": False, "lalp": -0.1},
    ]
    sel = LALPTopSelector()(datasets.Dataset.from_list(rows))
    assert len(sel.records) == 1 and sel.report["prompts_without_candidate"] == 1
    # Equal scores: the earlier record wins.
    assert sel.records["prompt_id"] == ["a"]


def test_single_teacher(rows, ds):
    sel = SingleTeacherSelector(teacher="QwQ")(ds)
    expected = sorted(r["row"] for r in rows if r["source"] == "QwQ" and r["correct"] is True)
    assert rows_of(sel) == expected
    with pytest.raises(ValueError, match=r"sources present: \['QwQ', 'Qwen3', 'R1', 'self'\]"):
        SingleTeacherSelector(teacher="o3")(ds)


def test_all_selector(rows, ds):
    assert rows_of(AllSelector()(ds)) == sorted(r["row"] for r in rows if r["correct"] is True)
    assert len(AllSelector(only_correct=False)(ds).records) == len(rows)


def test_random_is_seeded_filtered_and_capped(rows, ds):
    a = RandomSelector(n=40, seed=1, exclude_sources=["self"])(ds)
    b = RandomSelector(n=40, seed=1, exclude_sources=["self"])(ds)
    c = RandomSelector(n=40, seed=2, exclude_sources=["self"])(ds)
    assert rows_of(a) == rows_of(b) and rows_of(a) != rows_of(c)
    assert len(a.records) == 40
    assert all(r["correct"] is True and r["source"] != "self" for r in a.records)
    capped = RandomSelector(n=10_000, max_per_prompt=2, seed=0)(ds)
    assert max(Counter(capped.records["prompt_id"]).values()) == 2
    per_prompt_correct = Counter(r["prompt_id"] for r in rows if r["correct"] is True)
    assert len(capped.records) == sum(min(2, k) for k in per_prompt_correct.values())
    assert capped.report["shortfall"] == 10_000 - len(capped.records)


def test_random_is_uniform_over_the_pool():
    # 400 candidates, sample 200, 60 seeds: each row's inclusion count is ~Binomial(60, 0.5).
    ds = datasets.Dataset.from_dict(
        {"prompt_id": list(range(400)), "source": ["T"] * 400, "correct": [True] * 400}
    )
    hits = np.zeros(400)
    for seed in range(60):
        hits[np.array(RandomSelector(n=200, seed=seed)(ds).records["prompt_id"])] += 1
    assert hits.min() > 0
    assert abs(hits[:200].mean() - hits[200:].mean()) < 2


def test_selection_errors(ds):
    with pytest.raises(ValueError, match="select=lalp_top needs column lalp"):
        LALPTopSelector()(ds.remove_columns(["lalp"]))
    selected = AllSelector()(ds).records
    with pytest.raises(ValueError, match="already carry selection column"):
        AllSelector()(selected)
    with pytest.raises(ValueError, match="positive integer"):
        RandomSelector(n=0)


# ---- OXA ---------------------------------------------------------------------------------------


def test_oxa_combines_promote_and_suppress(ds):
    oxa = OXASelector(
        promote={
            "n": 40,
            "mu": 2.0,
            "sigma": 0.5,
            "ppl_min": 1.0,
            "ppl_max": 3.0,
            "bin_width": 0.1,
            "exclude_sources": ["self"],
        },
        suppress={"n": 20},
    )
    sel = oxa(ds)
    by_type = Counter(sel.records["loss_type"])
    assert set(by_type) == {"ce", "ul"}
    assert by_type["ul"] == 20 and by_type["ce"] == sel.report["promote"]["n_selected"]
    for r in sel.records:
        if r["loss_type"] == "ce":
            assert (
                r["correct"] is True
                and r["source"] != "self"
                and r["selected_by"] == "ppl_gaussian"
            )
        else:
            assert (
                r["correct"] is False
                and r["source"] == "self"
                and r["selected_by"] == "confident_incorrect"
            )
    assert (
        sel.report["shortfall"]
        == sel.report["promote"]["shortfall"] + sel.report["suppress"]["shortfall"]
    )


def test_every_config_instantiates():
    assert set(available_strategies()) >= {
        "all",
        "random",
        "ppl_lowest",
        "ppl_gaussian",
        "confident_incorrect",
        "galp_top",
        "lalp_top",
        "lalp_lowest",
        "single_teacher",
        "oxa",
    }
    for path in sorted(SELECT_CONF_DIR.glob("*.yaml")):
        cfg = compose_option("select", path.stem)
        if path.stem == "single_teacher":
            cfg.teacher = "QwQ"
        component = hydra.utils.instantiate(cfg)
        # A sized variant (toy_oxa, smollm2_oxa) builds the selector of the option it extends
        # (the first entry of its defaults list).
        raw = OmegaConf.load(path)
        extends = path.stem if "_target_" in raw else raw.defaults[0]
        assert component.name == extends, path.stem


def test_official_defaults_in_configs():
    g = compose_option("select", "ppl_gaussian")
    assert (g.n, g.mu, g.sigma, g.ppl_min, g.ppl_max, g.bin_width, g.max_per_prompt, g.seed) == (
        50000,
        2.5,
        0.25,
        1.0,
        5.0,
        0.05,
        1,
        42,
    )
    c = compose_option("select", "confident_incorrect")
    assert (c.n, c.min_ppl, c.max_per_prompt, list(c.sources)) == (50000, 1.2, 1, ["self"])
    oxa = compose_option("select", "oxa")
    for key in g:
        assert oxa.promote[key] == g[key], key
    for key in c:
        assert oxa.suppress[key] == c[key], key


# ---- API ---------------------------------------------------------------------------------------


def test_select_api_examples(rows, ds):
    picked = select(
        rows,
        "ppl_gaussian",
        n=50000,
        mu=2.5,
        sigma=0.25,
        ppl_min=1.0,
        ppl_max=5.0,
        bin_width=0.05,
        max_per_prompt=1,
        prefer_long=True,
        seed=42,
    )
    assert isinstance(picked, list) and picked
    assert {r["loss_type"] for r in picked} == {"ce"} and {r["selected_by"] for r in picked} == {
        "ppl_gaussian"
    }
    assert all(r["source"] != "self" and r["correct"] is True for r in picked)
    direct = select_with_report(ds, "ppl_gaussian", n=50000)
    assert sorted(r["row"] for r in picked) == rows_of(direct)
    assert direct.report["shortfall"] == 50000 - len(picked)

    wrong = select(ds, "confident_incorrect", n=50000, min_ppl=1.2, max_per_prompt=1)
    assert isinstance(wrong, datasets.Dataset)
    assert set(wrong["loss_type"]) == {"ul"}

    oxa = select(ds, "oxa", promote={"n": 30, "ppl_max": 3.0}, suppress={"n": 5})
    assert Counter(oxa["loss_type"])["ul"] == 5


def test_select_api_errors(ds):
    with pytest.raises(ValueError, match=r"unknown parameter 'nn'; valid keys: .*'n'.*'seed'"):
        select(ds, "ppl_gaussian", nn=5)
    with pytest.raises(ValueError, match=r"select\[oxa\].*\.promote.*unknown parameter 'min_ppl'"):
        select(ds, "oxa", promote={"min_ppl": 1.0})
    with pytest.raises(ValueError, match=r"unknown selection strategy 'gauss'.*available: \['all'"):
        select(ds, "gauss")
    with pytest.raises(ValueError, match=r"required parameter\(s\) \['teacher'\]"):
        select(ds, "single_teacher")
    with pytest.raises(ValueError, match="unknown selection strategy 'teacher_rank'"):
        select(ds, "teacher_rank")  # teacher ranking is the rank stage (rank_teachers)
    assert len(select(ds, "single_teacher", teacher="R1")) > 0


# ---- report ------------------------------------------------------------------------------------


def test_report_counts_and_files(rows, ds, tmp_path: Path):
    sel = select_with_report(
        ds, "oxa", promote={"n": 200, "mu": 2.0, "ppl_min": 1.0, "ppl_max": 3.0}, suppress={"n": 30}
    )
    summary = selection_report(sel, ds)
    by_source = {r["source"]: r for r in summary["by_source"]}
    for source in [*TEACHERS, "self"]:
        assert by_source[source]["pool"] == sum(r["source"] == source for r in rows)
        assert by_source[source]["selected"] == sum(r["source"] == source for r in sel.records)
    assert summary["by_loss_type"] == dict(Counter(sel.records["loss_type"]))
    # PPL bins are the Gaussian selector's own: 40 bins over [1, 3].
    assert len(summary["by_ppl_bin"]) == 40
    assert sum(b["selected"] for b in summary["by_ppl_bin"]) == len(sel.records)
    in_range = sum(1.0 <= r["ppl"] <= 3.0 for r in rows)
    assert sum(b["pool"] for b in summary["by_ppl_bin"]) == in_range
    promote_short = sel.report["promote"]["shortfall"]
    assert promote_short > 0
    assert summary["shortfalls"][0]["part"] == "oxa.promote"
    assert summary["shortfalls"][0]["shortfall"] == promote_short
    assert summary["total_shortfall"] == sel.report["shortfall"]
    assert summary["skipped"]["oxa.suppress"]["source_not_in_sources"] == sum(
        r["source"] != "self" for r in rows
    )

    paths = write_report(sel, ds, tmp_path)
    assert set(paths) == {"json", "markdown", "png"}
    assert json.loads(paths["json"].read_text())["n_selected"] == len(sel.records)
    markdown = paths["markdown"].read_text()
    assert "oxa.promote" in markdown and "| oxa.suppress | source_not_in_sources |" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_input_with_an_index_mapping(rows, ds):
    every_other = ds.select(range(0, len(ds), 2))
    sel = LowestPPLSelector(n=12, exclude_sources=["self"])(every_other)

    def keep(r):
        return r["source"] != "self" and r["correct"] is True

    assert rows_of(sel) == ref_lowest_ppl(rows[::2], keep, 1, 12)
    everything = AllSelector(only_correct=False)(every_other)
    assert everything.records["row"] == [r["row"] for r in rows[::2]]
    assert set(everything.records["loss_type"]) == {"ce"}
