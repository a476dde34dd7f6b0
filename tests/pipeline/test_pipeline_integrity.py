"""The pipeline over verified artifacts: damaged ones are rebuilt, never reused or wedged."""

from __future__ import annotations

import logging

from test_pipeline import _cfg

from reasonft.io import read_records
from reasonft.pipeline.runner import Pipeline

STAGES = "stages=[base,generate,verify,score,select]"


def test_truncated_scores_are_rebuilt_when_a_new_selection_reads_them(tmp_path, caplog):
    first = Pipeline(_cfg(tmp_path, STAGES))
    first.run()
    arts = {a.stage: a for a in first.artifacts}
    assert arts["select"].meta()["inputs"]["score"] == {
        "artifact": arts["score"].ref,
        "digest": arts["score"].digest,
    }
    assert arts["score"].meta()["inputs"]["verify"]["digest"] == arts["verify"].digest
    assert arts["verify"].meta()["inputs"]["generate"]["digest"] == arts["generate"].digest
    records = arts["score"].path / "records.parquet"
    rows = len(read_records(records))
    data = records.read_bytes()
    records.write_bytes(data[: len(data) // 2])

    with caplog.at_level(logging.WARNING):
        changed = Pipeline(_cfg(tmp_path, STAGES, "select.promote.mu=2.5"))
        changed.run()
    assert (
        f"artifact {arts['score'].path}: records.parquet has no readable parquet footer"
        in caplog.text
    )
    reused = {a.stage: a.reused for a in changed.artifacts}
    assert reused == {
        "base": True,
        "generate": True,
        "verify": True,
        "score": False,
        "select": False,
    }
    assert len(read_records(records)) == rows
