"""Selectors declare what they read, stop on a missing score column, and never hand back an
empty training set."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from reasonft.selection import base, teacher_rank
from reasonft.selection.api import available_strategies, build_selector, select
from reasonft.selection.base import EmptySelection, MissingColumn
from reasonft.selection.oxa import OXASelector
from reasonft.selection.per_prompt import LALPTopSelector
from reasonft.selection.simple import AllSelector
from reasonft.selection.teacher_rank import TeacherRanker

BASE = {"prompt_id", "source"}
PARAMS = {"single_teacher": {"teacher": "t1"}}


def _pool(n_prompts: int = 30, seed: int = 0) -> datasets.Dataset:
    """Two teachers and the student on each prompt, every score column filled."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for source in ("t1", "t2", "self"):
            rows.append(
                {
                    "prompt_id": f"p{p}",
                    "source": source,
                    "correct": bool(rng.random() < 0.6),
                    "ppl": float(rng.uniform(1.3, 4.0)),
                    "galp": float(-rng.uniform(0.2, 1.2)),
                    "lalp": float(-rng.uniform(0.1, 1.0)),
                    "n_tokens": int(rng.integers(10, 200)),
                }
            )
    return datasets.Dataset.from_list(rows)


def _ppl_only(ds: datasets.Dataset) -> datasets.Dataset:
    """What score=ppl hands over: lalp present but null everywhere."""
    return ds.remove_columns(["lalp"]).add_column(
        "lalp", [None] * len(ds), feature=datasets.Value("float64")
    )


def _columns_read(monkeypatch, selector, ds) -> set[str]:
    read: set[str] = set()
    for module in (base, teacher_rank):
        original = module.read_frame

        def recording(frame_ds, columns, stage, _original=original):
            read.update(columns)
            return _original(frame_ds, columns, stage)

        monkeypatch.setattr(module, "read_frame", recording)
    selector(ds)
    return read - BASE


# Sized variants (toy_oxa, smollm2_oxa, ...) build the class of the option they extend:
# checked there (their windows sit on other PPL scales than this synthetic pool's 1.3-4).
BASE_STRATEGIES = [s for s in available_strategies() if not s.startswith(("toy_", "smollm2_"))]


@pytest.mark.parametrize("strategy", BASE_STRATEGIES)
def test_requires_is_exactly_what_the_strategy_reads(monkeypatch, strategy):
    params = {"n": 20} if strategy in ("ppl_gaussian", "ppl_lowest", "random", "confident_incorrect") else {}
    selector = build_selector(strategy, **PARAMS.get(strategy, {}), **params)
    assert _columns_read(monkeypatch, selector, _pool()) == set(selector.requires)


def test_the_rankers_requires_is_exactly_what_it_reads(monkeypatch):
    ranker = TeacherRanker(n_prompts=10, n_bootstrap=20)
    assert _columns_read(monkeypatch, ranker, _pool()) == set(ranker.requires)


def test_declared_requirements():
    assert build_selector("lalp_top").requires == {"lalp", "correct"}
    assert build_selector("galp_top").requires == {"galp", "correct"}
    assert build_selector("oxa").requires >= {"ppl", "correct"}
    assert TeacherRanker().requires == {"lalp", "galp", "correct"}
    assert TeacherRanker(metrics=["lalp"], only_correct=False).requires == {"lalp"}
    assert build_selector("random").requires == {"correct"}
    assert build_selector("random", only_correct=False).requires == set()


def test_lalp_top_after_a_ppl_only_score_stage_stops_naming_the_option():
    """Before: 0 records selected, exit 0; training failed far away."""
    with pytest.raises(MissingColumn) as info:
        LALPTopSelector()(_ppl_only(_pool()))
    message = str(info.value)
    assert "select=lalp_top needs column lalp" in message
    assert "['n_tokens', 'ppl', 'galp']" in message
    assert "score=lalp or score.method=all" in message
    with pytest.raises(MissingColumn, match="rank=teacher needs column lalp"):
        TeacherRanker()(_ppl_only(_pool()))
    with pytest.raises(MissingColumn, match="select=oxa needs column ppl"):
        build_selector("oxa")(_pool().remove_columns(["ppl"]))
    with pytest.raises(MissingColumn, match="needs column correct.*verify stage"):
        select(_pool().remove_columns(["correct"]).to_list(), "all")


def test_an_empty_selection_stops_with_its_report():
    wrong = _pool().map(lambda r: {"correct": False})
    with pytest.raises(EmptySelection) as info:
        AllSelector()(wrong)
    report = info.value.selection.report
    assert report["n_selected"] == 0 and report["n_pool"] == 90
    assert report["skipped"] == {"not_correct": 90}
    assert "select=all: no record selected from a pool of 90" in str(info.value)
    assert "not_correct" in str(info.value)
    with pytest.raises(EmptySelection):
        select(wrong.to_list(), "lalp_top")


def test_oxa_reports_an_empty_part_and_stops_only_when_both_are_empty(caplog):
    oxa = OXASelector(
        promote={"n": 20, "mu": 2.5, "sigma": 0.5, "ppl_min": 1.0, "ppl_max": 5.0, "bin_width": 0.5},
        suppress={"n": 20, "min_ppl": 1.2},
    )
    pool = _pool()
    no_self_wrong = pool.map(lambda r: {"correct": True if r["source"] == "self" else r["correct"]})
    sel = oxa(no_self_wrong)
    assert sel.report["empty_parts"] == ["suppress"]
    assert sel.report["n_by_loss_type"]["ul"] == 0 and len(sel.records) > 0
    assert "suppress part selected no record" in caplog.text
    with pytest.raises(EmptySelection, match="select=oxa") as info:
        oxa(pool.map(lambda r: {"source": "t1", "correct": False}))
    assert info.value.selection.report["empty_parts"] == ["promote", "suppress"]
