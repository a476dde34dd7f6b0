"""A new stage, a new selector and a new loss term, each written here and nowhere else, run by
`run.py` through overrides alone: the pipeline package knows none of them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import pytest
from torch import Tensor

from reasonft.config import PROJECT_ROOT
from reasonft.io import write_json
from reasonft.pipeline.stage import Facts, Stage, StageInputs
from reasonft.selection.base import Selection, Selector
from reasonft.training.losses import LossInputs, LossTerm

HERE = "tests.pipeline.test_custom_parts"
TINY_TOY = [
    "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2", "verify.workers=1",
    "logger=none", "callbacks.progress_bar=null",
]
TINY_STUDENT = [
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=32", "model.build.intermediate_size=64",
]


class CorrectBySource(Stage):
    """How many verified-correct responses each teacher wrote."""

    name = "correct_by_source"
    reads: ClassVar[tuple[str, ...]] = ("verify.answer_rule",)

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("verify",)

    def produce(self, inputs: StageInputs, out_dir: Path) -> dict[str, Any]:
        pool = inputs.records_of("verify")
        counts = Counter(s for s, ok in zip(pool["source"], pool["correct"], strict=True) if ok)
        write_json(dict(counts), out_dir / "correct_by_source.json")
        return {"sources": len(counts), "correct": sum(counts.values())}


class HalvedCrossEntropy(LossTerm):
    """Half the cross-entropy of each scored token."""

    def token_loss(self, inputs: LossInputs) -> Tensor:
        return -0.5 * inputs.logp


class EveryOtherCorrect(Selector):
    """Every second verified-correct record, in pool order."""

    name = "every_other"

    def __call__(self, ds: datasets.Dataset) -> Selection:
        _, keep, skipped = self.filtered(ds)
        return self.finish(ds, np.flatnonzero(keep)[::2], {"skipped": skipped})


def _run(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "run.py", *TINY_TOY, f"paths.output_dir={tmp_path}/run",
         f"paths.cache_dir={tmp_path}/cache", *overrides],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_a_stage_from_a_test_file_runs_from_run_py(tmp_path):
    results = _run(
        tmp_path, f"+pipeline.correct_by_source._target_={HERE}.CorrectBySource",
        "stages=[correct_by_source,report]",
    )
    assert results["plan"] == ["verify", "correct_by_source", "report"]
    (key,) = [k for k in results["stages"] if k.startswith("correct_by_source:")]
    entry = results["stages"][key]
    counts = json.loads((Path(entry["path"]) / "correct_by_source.json").read_text())
    assert entry["report"] == {"sources": len(counts), "correct": sum(counts.values())} and counts
    (verify,) = [v for k, v in results["stages"].items() if k.startswith("verify:")]
    assert counts == {s: c["correct"] for s, c in verify["report"]["by_source"].items() if c["correct"]}


def test_a_selector_and_a_loss_term_from_a_test_file_train_from_run_py(tmp_path):
    """The test's selector picks the training set and the test's term trains beside CE on the same
    records: the term's logged value is half of CE's at every step."""
    results = _run(
        tmp_path, *TINY_STUDENT, "select=all", f"select._target_={HERE}.EveryOtherCorrect",
        "loss=sft", f"+loss.terms.half._target_={HERE}.HalvedCrossEntropy",
        "+loss.terms.half.loss_type=ce", "train.per_step={ce:4,ul:0}", "train.micro_batch_size=2",
        "trainer.max_steps=2", "logger=csv", "stages=[train,report]",
    )
    assert results["plan"] == ["base", "verify", "select", "train", "report"]
    (select,) = [v for k, v in results["stages"].items() if k.startswith("select:")]
    (verify,) = [v for k, v in results["stages"].items() if k.startswith("verify:")]
    correct = verify["report"]["status"]["correct"]
    assert select["report"]["n_selected"] == (correct + 1) // 2 > 0
    (metrics,) = (tmp_path / "run").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("loss_half")]
    assert len(rows) == 2
    for row in rows:
        assert float(row["loss_half"]) == pytest.approx(0.5 * float(row["loss_ce"]), rel=1e-5)
        assert float(row["loss"]) == pytest.approx(1.5 * float(row["loss_ce"]), rel=1e-5)


def test_a_stage_that_loads_no_model_never_asks_for_its_identity(tmp_path):
    """Before: `model=hf` with no path and `stages=[verify,report]` ended in a TypeError inside
    `path_identity(None)`, though verify never loads a model."""
    from reasonft.config import compose_config
    from reasonft.pipeline.runner import Pipeline

    cfg = compose_config([
        "model=hf", "model.path=null", "data=toy_real", "stages=[verify,report]",
        f"paths.output_dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache", *TINY_TOY,
    ])
    pipeline = Pipeline(cfg)
    assert list(pipeline.keys()) == ["verify"]
    pipeline.run()
    assert [a.stage for a in pipeline.artifacts] == ["verify"]
